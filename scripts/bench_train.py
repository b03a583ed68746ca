"""Training + evaluation throughput: `python scripts/bench_train.py experiment=NAME out=DIR` (conf/bench_train.yaml).

Same as `twotower-bench-train ...` or `python -m twotower.cli.bench_train ...` (twotower/cli/bench_train.py).
"""

from twotower.cli.bench_train import main

if __name__ == "__main__":
    main()
