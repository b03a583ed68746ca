"""Retrieval latency vs recall: `python scripts/bench_latency.py n_items=1000000 out=DIR` (see conf/bench_latency.yaml)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from twotower.benchmarks.latency import SWEEP_FIELD, run_latency  # noqa: E402
from twotower.benchmarks.plot import plot_latency  # noqa: E402
from twotower.config import CONFIG_DIR  # noqa: E402

log = logging.getLogger("bench_latency")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench_latency")
def main(cfg: DictConfig) -> None:
    sizes = cfg.n_items if OmegaConf.is_list(cfg.n_items) else [cfg.n_items]
    kinds, base = list(cfg.indexes), OmegaConf.to_container(cfg.index_base)
    if cfg.get("index"):  # a conf/index preset: that kind only, its settings over index_base
        preset = OmegaConf.to_container(cfg.index)
        kinds, base = [preset.pop("kind")], {**base, **{k: v for k, v in preset.items() if v is not None}}
    out = Path(cfg.out)
    result = run_latency(
        [int(n) for n in sizes], out, kinds, OmegaConf.to_container(cfg.sweep),
        base, queries=cfg.queries, k=cfg.k, threads=cfg.threads, dim=cfg.dim,
        bundle=cfg.bundle, run_dir=cfg.run_dir, build_threads=cfg.build_threads, query_mixture=cfg.query_mixture,
        rounds=cfg.rounds,
    )  # fmt: skip
    (out / "latency.json").write_text(json.dumps(result, indent=2))
    plot_latency(result, out / "latency.png")
    for r in result["results"]:
        naive = r["naive"]["p50_ms"] if r["naive"] else float("nan")
        field = SWEEP_FIELD.get(r["params"]["kind"])
        setting = f"{field}={r['params'][field]}" if field else ""
        print(f"{r['n_items']:>9} {r['index']:<20} {setting:<14} recall@10 {r['recall@10']:.3f}"
              f"  encode {r['encode']['p50_ms']:.3f}  search {r['search']['p50_ms']:.3f}"
              f" (own {r['search_user_vector']['p50_ms']:.3f})  recommend p50 {r['recommend']['p50_ms']:.3f}"
              f" p99 {r['recommend']['p99_ms']:.3f} (known user {r['recommend_known_user']['p50_ms']:.3f}"
              f" / {r['recommend_known_user']['p99_ms']:.3f}) ms  glue {r['glue_over_encode_then_search']:+.0%}"
              f"  naive {naive:.2f} ms  build {r['build_seconds']:.1f} s"
              f"  probe {1000 * r['speed_probe']['p50_ms']:.0f} us")  # fmt: skip
    print(f"wrote {out / 'latency.json'} and {out / 'latency.png'}")


if __name__ == "__main__":
    main()
