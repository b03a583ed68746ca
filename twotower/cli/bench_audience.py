"""Audience quality: `twotower-bench-audience run_dir=RUN out=audience.json` (conf/bench_audience.yaml).

Item-to-user Recall@N of the model's audiences beside a baseline ranking users by activity, on the run's
leave-last-out test split (twotower/benchmarks/audience.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig

from twotower.benchmarks.audience import audience_quality, format_table
from twotower.cli._hydra import hydra_app


@hydra_app("bench_audience")
def main(cfg: DictConfig) -> None:
    result = audience_quality(
        cfg.run_dir, bundle=cfg.bundle, ns=list(cfg.ns), threads=cfg.threads or os.cpu_count() or 1
    )
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
