"""Serving benchmark: `twotower-bench-serving BUNDLE [--out serving_latency.json] [--http-seconds 10]
[--store redis]`."""

from __future__ import annotations

import argparse
import json

from twotower.benchmarks.service import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--http-seconds", type=float, default=0.0, help="0 skips the HTTP part")
    parser.add_argument("--store", default="", help="also measure with Redis in the path, beside SQLite: "
                        "redis://host:port/db, or 'redis' for a throwaway local redis-server")  # fmt: skip
    args = parser.parse_args(argv)
    if (
        args.store
        and args.store != "redis"
        and not args.store.startswith(("redis://", "rediss://", "unix://"))
    ):
        parser.error(f"--store {args.store!r}: expected redis://host:port/db or redis")
    result = run(args.bundle, args.out, n_users=args.users, http_seconds=args.http_seconds, store=args.store)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
