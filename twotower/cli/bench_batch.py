"""Batch-scoring throughput: `twotower-bench-batch n_items=1000000 out=DIR` (conf/bench_batch.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from serving.core.index import IndexSpec
from twotower.benchmarks.throughput import run_throughput
from twotower.cli._hydra import hydra_app


@hydra_app("bench_batch")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_throughput(
        cfg.n_items, out, n_users=cfg.users, k=cfg.k, exact_users=cfg.exact_users,
        spec=IndexSpec.from_dict(cfg.index), search_values=list(cfg.search_values),
        chunk=cfg.chunk, threads=cfg.threads, dim=cfg.dim, bundle=cfg.bundle,
    )  # fmt: skip
    (out / "batch.json").write_text(json.dumps(result, indent=2))
    for row in result["results"]:
        print(json.dumps(row))
    print(f"exact (BLAS): {result['exact']['users_per_s']:.0f} users/s over {result['exact']['users']} users;"
          f" index build {result['index_build_seconds']:.1f} s; wrote {out / 'batch.json'}")  # fmt: skip


if __name__ == "__main__":
    main()
