"""Retrieval latency vs recall: `twotower-bench-latency n_items=1000000 out=DIR` (see conf/bench_latency.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from serving.core.index import IndexSpec
from twotower.benchmarks.latency import SWEEP_FIELD, run_latency
from twotower.benchmarks.plot import plot_latency
from twotower.cli._hydra import hydra_app


@hydra_app("bench_latency")
def main(cfg: DictConfig) -> None:
    sizes = cfg.n_items if OmegaConf.is_list(cfg.n_items) else [cfg.n_items]
    kinds, base = list(cfg.indexes), OmegaConf.to_container(cfg.index_base)
    if cfg.get("index"):  # a conf/index preset: that kind only, its settings over index_base
        preset = IndexSpec.from_dict(cfg.index).to_dict()  # IndexSpec's defaults where it says nothing
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
        eager = r.get("torch_faiss") or {"p50_ms": float("nan"), "p99_ms": float("nan")}
        field = SWEEP_FIELD.get(r["params"]["kind"])
        setting = f"{field}={r['params'][field]}" if field else ""
        print(f"{r['n_items']:>9} {r['index']:<20} {setting:<14} recall@10 {r['recall@10']:.3f}"
              f"  encode {r['encode']['p50_ms']:.3f}  search {r['search']['p50_ms']:.3f}"
              f" (own {r['search_user_vector']['p50_ms']:.3f})  recommend p50 {r['recommend']['p50_ms']:.3f}"
              f" p99 {r['recommend']['p99_ms']:.3f} (known user {r['recommend_known_user']['p50_ms']:.3f}"
              f" / {r['recommend_known_user']['p99_ms']:.3f}) ms  glue {r['glue_over_encode_then_search']:+.0%}"
              f"  naive {naive:.2f} ms  torch_faiss {eager['p50_ms']:.3f} / {eager['p99_ms']:.3f} ms"
              f"  build {r['build_seconds']:.1f} s"
              f"  probe {1000 * r['speed_probe']['p50_ms']:.0f} us")  # fmt: skip
    print(f"wrote {out / 'latency.json'} and {out / 'latency.png'}")


if __name__ == "__main__":
    main()
