"""Export a training run as a serving bundle: `twotower-export run_dir=RUN out=BUNDLE index=hnsw`."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from serving.core.index import IndexSpec
from twotower.cli._hydra import hydra_app
from twotower.export import export_bundle


@hydra_app("export")
def main(cfg: DictConfig) -> None:
    spec = IndexSpec.from_dict(cfg.index)
    rerank = OmegaConf.to_container(cfg.rerank, resolve=True) if cfg.get("rerank") else None
    manifest = export_bundle(cfg.run_dir, cfg.out, spec, rerank)
    summary = {k: manifest[k] for k in ("model_version", "dim", "max_len", "counts", "onnx_parity_max_abs")}
    summary["rerank"] = manifest["rerank"]
    summary["index"] = {k: manifest["index"][k] for k in ("factory", "recall@10_vs_exact", "build_seconds")}
    print(json.dumps(summary, indent=2))
    print(f"bundle: {cfg.out}")


if __name__ == "__main__":
    main()
