"""Feedback-loop check: `python scripts/check_adaptation.py BUNDLE --categories Horror Romance [--out F.json]`.

Same as `twotower-check-adaptation ...` or `python -m twotower.cli.check_adaptation ...`
(twotower/cli/check_adaptation.py).
"""

from twotower.cli.check_adaptation import main

if __name__ == "__main__":
    main()
