"""Feedback-loop simulator: `python scripts/simulate_feedback.py bundle=B out=DIR [users=N rounds=R]`.

Same as `twotower-simulate-feedback ...` or `python -m twotower.cli.simulate_feedback ...`
(twotower/cli/simulate_feedback.py; conf/simulate_feedback.yaml; docs/responsible.md).
"""

from twotower.cli.simulate_feedback import main

if __name__ == "__main__":
    main()
