"""Retrieval latency vs recall: `python scripts/bench_latency.py n_items=1000000 out=DIR` (conf/bench_latency.yaml).

Same as `twotower-bench-latency ...` or `python -m twotower.cli.bench_latency ...` (twotower/cli/bench_latency.py).
"""

from twotower.cli.bench_latency import main

if __name__ == "__main__":
    main()
