"""The cold-start table: `twotower-cold-start features=RUN_A plain=RUN_B [--out F.json]`.

Runs of the same data and split (e.g. experiment=ml100k_features with and without its features): every test
user cut to their first 0, 1 and 3 events, Recall@10 for each run, popularity and (when the log has user features)
popularity by profile (twotower/cold_start.py)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

# What twotower.cold_start reads from each run (artifacts.MODEL_FILE and the run's config), named here so that
# a bad argument is refused before torch and the data load (twotower.cold_start is imported after the check).
RUN_FILES = ("model.pt", "config.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR", help="training runs on the same split")
    parser.add_argument("--cuts", type=int, nargs="+", default=None, help="first events kept (default 0 1 3)")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    return parser


def parse_runs(parser: argparse.ArgumentParser, runs: list[str]) -> dict[str, Path]:
    """``NAME=RUN_DIR`` arguments as {name: run dir}; each is checked before any evaluation starts (a missing
    file or a mistyped option such as ``out=F.json`` is a one-line usage error naming the argument)."""
    parsed: dict[str, Path] = {}
    for arg in runs:
        name, sep, run = arg.partition("=")
        if not sep or not name or not run:
            parser.error(f"{arg!r}: expected NAME=RUN_DIR")
        if name in parsed:
            parser.error(f"{arg!r}: the name {name!r} is given twice")
        missing = [f for f in RUN_FILES if not (Path(run) / f).is_file()]
        if missing:
            hint = " (write the table with --out FILE.json)" if name == "out" else ""
            parser.error(f"{arg}: not a training run ({', '.join(missing)} missing in {run}){hint}")
        parsed[name] = Path(run)
    return parsed


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    runs = parse_runs(parser, args.runs)
    from twotower.cold_start import CUTS, cold_start

    logging.basicConfig(level=logging.INFO)
    text = json.dumps(cold_start(runs, tuple(args.cuts or CUTS)), indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
