"""Parquet path benchmark: `python scripts/bench_data.py events=20000000 out=DIR` (conf/bench_data.yaml).

Same as `python -m twotower.cli.bench_data ...` (twotower/cli/bench_data.py).
"""

from twotower.cli.bench_data import main

if __name__ == "__main__":
    main()
