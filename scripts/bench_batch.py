"""Batch-scoring throughput: `python scripts/bench_batch.py n_items=1000000 out=DIR` (conf/bench_batch.yaml)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from serving.core.index import IndexSpec  # noqa: E402
from twotower.benchmarks.throughput import run_throughput  # noqa: E402
from twotower.config import CONFIG_DIR  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench_batch")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_throughput(
        cfg.n_items, out, n_users=cfg.users, k=cfg.k, exact_users=cfg.exact_users,
        spec=IndexSpec(**OmegaConf.to_container(cfg.index)), search_values=list(cfg.search_values),
        chunk=cfg.chunk, threads=cfg.threads, dim=cfg.dim, bundle=cfg.bundle,
    )  # fmt: skip
    (out / "batch.json").write_text(json.dumps(result, indent=2))
    for row in result["results"]:
        print(json.dumps(row))
    print(f"exact (BLAS): {result['exact']['users_per_s']:.0f} users/s over {result['exact']['users']} users;"
          f" index build {result['index_build_seconds']:.1f} s; wrote {out / 'batch.json'}")  # fmt: skip


if __name__ == "__main__":
    main()
