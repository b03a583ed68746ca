"""Top-k for every user into Parquet: `python scripts/batch_score.py bundle=BUNDLE k=100 out=FILE.parquet`.

Same as `twotower-batch-score ...` or `python -m twotower.cli.batch_score ...` (twotower/cli/batch_score.py).
"""

from twotower.cli.batch_score import main

if __name__ == "__main__":
    main()
