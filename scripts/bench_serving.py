"""Serving benchmark: `python scripts/bench_serving.py BUNDLE [--out serving_latency.json] [--http-seconds 10]`.

Same as `twotower-bench-serving ...` or `python -m twotower.cli.bench_serving ...` (twotower/cli/bench_serving.py).
"""

from twotower.cli.bench_serving import main

if __name__ == "__main__":
    main()
