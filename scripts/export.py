"""Export a training run as a serving bundle: `python scripts/export.py run_dir=RUN out=BUNDLE index=hnsw`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from serving.core.index import IndexSpec  # noqa: E402
from twotower.config import CONFIG_DIR  # noqa: E402
from twotower.export import export_bundle  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    spec = IndexSpec(**OmegaConf.to_container(cfg.index, resolve=True))
    rerank = OmegaConf.to_container(cfg.rerank, resolve=True) if cfg.get("rerank") else None
    manifest = export_bundle(cfg.run_dir, cfg.out, spec, rerank)
    summary = {k: manifest[k] for k in ("model_version", "dim", "max_len", "counts", "onnx_parity_max_abs")}
    summary["rerank"] = manifest["rerank"]
    summary["index"] = {k: manifest["index"][k] for k in ("factory", "recall@10_vs_exact", "build_seconds")}
    print(json.dumps(summary, indent=2))
    print(f"bundle: {cfg.out}")


if __name__ == "__main__":
    main()
