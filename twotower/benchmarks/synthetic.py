"""Synthetic catalogs with cluster structure, and a bundle over one, for benchmarks at any catalog size.

The catalog: unit vectors around ``n_clusters`` topic centres whose sizes follow a Zipf law (a few big topics,
a long tail), like trained item vectors. The bundle goes through the real export path: a 2-layer user tower
(untrained: latency does not depend on the weights) whose item table *is* the catalog, written as a run
directory and exported by :func:`twotower.export.export_bundle` (ONNX parity and index checks included).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from serving.core.history import sequence_starts, time_gaps
from twotower.artifacts import MODEL_FILE, save_model
from twotower.benchmarks.catalog import clustered_catalog
from twotower.model import ModelConfig, TwoTower

if TYPE_CHECKING:
    from serving.core.index import IndexSpec

log = logging.getLogger(__name__)


def catalog_net(catalog: np.ndarray, max_len: int = 50, num_layers: int = 2, seed: int = 0) -> TwoTower:
    """An untrained two-tower model (latency does not depend on the weights) whose item vectors are ``catalog``
    (N, D). Importable without FAISS or ONNX Runtime, for the GPU benchmark."""
    n_items, dim = catalog.shape
    torch.manual_seed(seed)
    config = ModelConfig(n_items=n_items, n_events=2, dim=dim, max_len=max_len, num_layers=num_layers,
                         num_heads=2, dropout=0.0, normalize=True, temperature=0.1)  # fmt: skip
    net = TwoTower(config).eval()
    with torch.no_grad():
        net.item_tower.id_embedding.weight[1:] = torch.from_numpy(catalog)  # (N, D)
    return net


def synthetic_run(
    out: Path, n_items: int, dim: int = 64, max_len: int = 50, num_layers: int = 2, n_users: int = 1000,
    seed: int = 0,
) -> Path:  # fmt: skip
    """A run directory (model.pt, data/) whose model's item vectors are a clustered catalog of ``n_items``."""
    rng = np.random.default_rng(seed)
    catalog, _ = clustered_catalog(n_items, dim, seed)
    net = catalog_net(catalog, max_len, num_layers, seed)
    (out / "data").mkdir(parents=True, exist_ok=True)
    save_model(net, out / MODEL_FILE)
    item_ids = [str(i) for i in range(n_items)]
    vocab = {"dataset": f"synthetic-{n_items}", "users": [f"u{u}" for u in range(n_users)], "items": item_ids,
             "events": ["<other>", "click"], "categories": ["<pad>"], "has_time": True}  # fmt: skip
    (out / "data" / "vocab.json").write_text(json.dumps(vocab))
    popularity = rng.zipf(1.3, size=n_items).clip(max=100_000)
    pd.DataFrame(
        {"item_id": item_ids, "categories": [[] for _ in item_ids], "train_count": popularity}
    ).to_parquet(out / "data" / "items.parquet", index=False)
    lengths = rng.integers(5, max_len + 1, size=n_users)
    users = np.repeat([f"u{u}" for u in range(n_users)], lengths)
    picked = rng.choice(n_items, size=len(users), p=popularity / popularity.sum())
    ts = 1.7e9 + np.concatenate([np.cumsum(rng.exponential(600.0, size=n)) for n in lengths])
    gaps = time_gaps(ts, sequence_starts(users))
    pd.DataFrame({"user_id": users, "item_id": np.asarray(item_ids, dtype=object)[picked], "event": "click",
                  "dwell_s": rng.exponential(40.0, size=len(users)).astype(np.float32), "ts": ts,
                  "gap_s": gaps}).to_parquet(out / "data" / "histories.parquet", index=False)  # fmt: skip
    (out / "metrics.json").write_text(json.dumps({"dataset": {"name": vocab["dataset"]}, "test": {}}))
    return out


def synthetic_bundle(
    root: Path, n_items: int, dim: int = 64, spec: IndexSpec | None = None, **kwargs
) -> Path:
    """Export (once; reused when present) a bundle over a synthetic catalog of ``n_items`` under ``root``."""
    bundle = root / f"bundle-{n_items}-d{dim}"
    if (bundle / "manifest.json").exists():
        return bundle
    from serving.core.index import IndexSpec  # FAISS and ONNX Runtime: export only
    from twotower.export import export_bundle

    run = synthetic_run(root / f"run-{n_items}-d{dim}", n_items, dim, **kwargs)
    log.info("exporting a synthetic bundle of %d items to %s", n_items, bundle)
    export_bundle(run, bundle, spec or IndexSpec(kind="flat"))
    return bundle
