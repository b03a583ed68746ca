"""Load and soak: `twotower-soak BUNDLE --out DIR [--seconds 60] [--connections 8] [--write-share 0.1]`.

Starts the server on loopback, measures its capacity with wrk, event-write latency alone and under full read
load, then soaks it at 70% of the capacity; writes DIR/soak.json. Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import logging

from twotower.benchmarks.soak import run, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument(
        "--out", required=True, help="folder for soak.json, the wrk script and the server log"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="soak length")
    parser.add_argument("--window", type=int, default=10, help="soak window in seconds (one wrk run each)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--write-share", type=float, default=0.1, help="share of POST /events in the mix")
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--writes", type=int, default=200, help="timed event writes, alone and under load")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternations of the unloaded and loaded writes"
    )
    parser.add_argument("--rate-share", type=float, default=0.7, help="soak rate as a share of the capacity")
    parser.add_argument("--server-source", help="run the server from this source tree (e.g. a git worktree)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args.bundle, args.out, seconds=args.seconds, window=args.window, connections=args.connections,
                 write_share=args.write_share, capacity_seconds=args.capacity_seconds, writes=args.writes,
                 rate_share=args.rate_share, rounds=args.rounds, source=args.server_source)  # fmt: skip
    print(summary(result))


if __name__ == "__main__":
    main()
