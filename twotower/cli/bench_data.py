"""Parquet path benchmark: `python -m twotower.cli.bench_data events=20000000 out=DIR` (conf/bench_data.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from twotower.benchmarks.data import run_bench
from twotower.cli._hydra import hydra_app


@hydra_app("bench_data")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = OmegaConf.to_container(cfg.settings, resolve=True)
    result = run_bench(cfg.events, out, users=cfg.n_users, items=cfg.n_items, settings=settings,
                       reuse_data=cfg.reuse_data, seed=cfg.seed)  # fmt: skip
    (out / "bench_data.json").write_text(json.dumps(result, indent=2))
    print(f"{result['events']} events, {result['users']} users, {result['items']} items: "
          f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB; wrote {out / 'bench_data.json'}")  # fmt: skip


if __name__ == "__main__":
    main()
