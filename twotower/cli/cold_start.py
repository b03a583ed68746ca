"""The cold-start table: `twotower-cold-start features=RUN_A plain=RUN_B [--out F.json]`.

Runs of the same data and split (e.g. experiment=ml100k_features with and without its features): every test
user cut to their first 0, 1 and 3 events, Recall@10 for each run, popularity and (when the log has user features)
popularity by profile (twotower/cold_start.py)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from twotower.cold_start import CUTS, cold_start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR", help="training runs on the same split")
    parser.add_argument("--cuts", type=int, nargs="+", default=list(CUTS), help="first events kept")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    runs = dict(run.split("=", 1) for run in args.runs)
    text = json.dumps(cold_start(runs, tuple(args.cuts)), indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
