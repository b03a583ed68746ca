"""Batch-scoring throughput: `python scripts/bench_batch.py n_items=1000000 out=DIR` (conf/bench_batch.yaml).

Same as `twotower-bench-batch ...` or `python -m twotower.cli.bench_batch ...` (twotower/cli/bench_batch.py).
"""

from twotower.cli.bench_batch import main

if __name__ == "__main__":
    main()
