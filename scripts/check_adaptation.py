"""Feedback-loop check: `python scripts/check_adaptation.py BUNDLE --categories Horror Romance [--out F.json]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving.adaptation import adaptation_check  # noqa: E402
from serving.recommender import Recommender  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--categories", nargs="+", required=True, help="clicked in this order")
    parser.add_argument("--clicks", type=int, default=15)
    parser.add_argument("--event", default=None, help="event type of the clicks (default: '<other>')")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = adaptation_check(Recommender.load(args.bundle), args.categories, args.clicks, event=args.event)
    for step in result["steps"]:
        print(f"after {step['category'] or 'no events'}: {step['in_category']} of the top {result['k']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
