"""Audience quality on a run's test split: `python scripts/bench_audience.py run_dir=RUN out=audience.json`.

Same as `twotower-bench-audience ...` or `python -m twotower.cli.bench_audience ...`.
"""

from twotower.cli.bench_audience import main

if __name__ == "__main__":
    main()
