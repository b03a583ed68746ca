"""Responsible-personalization report: `python scripts/report.py run_dir=RUN` (conf/report.yaml).

Same as `twotower-report ...` or `python -m twotower.cli.report ...` (twotower/cli/report.py).
"""

from twotower.cli.report import main

if __name__ == "__main__":
    main()
