"""Feedback-loop check: `twotower-check-adaptation BUNDLE --categories Horror Romance [--out F.json]`.

`--pairs 10`: also every ordered pair of the 10 largest categories; `--boost 0`: the model alone (no
session-intent re-rank)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serving.core.listsettings import KNOBS_OFF
from serving.recommender import Recommender
from twotower.benchmarks.adaptation import adaptation_check, pair_sweep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--categories", nargs="+", required=True, help="clicked in this order")
    parser.add_argument("--clicks", type=int, default=15)
    parser.add_argument("--event", default=None, help="event type of the clicks (default: '<other>')")
    parser.add_argument(
        "--pairs", type=int, default=0, help="also sweep the ordered pairs of this many categories"
    )
    parser.add_argument(
        "--boost", type=float, default=None, help="session-intent boost (default: the bundle's)"
    )
    parser.add_argument(
        "--model-only",
        action="store_true",
        help="the model's ranking alone: no session intent and the list knobs off (diversity, calibration...)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.model_only:
        rec = Recommender.load(args.bundle, intent_boost=0.0, ranking=KNOBS_OFF)
    else:
        rec = Recommender.load(args.bundle, intent_boost=args.boost)
    result = adaptation_check(rec, args.categories, args.clicks, event=args.event)
    for step in result["steps"]:
        print(f"after {step['category'] or 'no events'}: {step['in_category']} of the top {result['k']}")
    if args.pairs:
        result["pairs"] = pair_sweep(rec, args.pairs, args.clicks)
        print(
            f"pairs where both steps reach {result['pairs']['need']} of {result['pairs']['k']}: "
            f"{result['pairs']['both_steps_pass']} of {result['pairs']['pairs']}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
