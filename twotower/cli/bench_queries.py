"""What searches in a history cost a request: `twotower-bench-queries BUNDLE [--out F.json]`.

`recommend()` p50 of stored users' last items as a one-off history, with and without 3 searches among them,
alternating in one run (twotower/benchmarks/query_cost.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from twotower.benchmarks.query_cost import query_cost


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument("--requests", type=int, default=300, help="histories per kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--length", type=int, default=20, help="items per history")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = query_cost(args.bundle, n_requests=args.requests, rounds=args.rounds, length=args.length)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
