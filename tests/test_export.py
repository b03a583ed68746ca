"""Export: the bundle's ONNX user towers against the torch model, and the manifest."""

from __future__ import annotations

import numpy as np
import torch

from twotower.artifacts import load_model
from twotower.export import onnx_parity, random_histories


def test_manifest_and_onnx_parity(run_and_bundle):
    run, bundle, manifest = run_and_bundle
    assert manifest["onnx_parity_max_abs"] <= 1e-5
    assert set(manifest["files"]) == {"user_tower.onnx", "item_embeddings.npy", "item_ids.json", "items.parquet",
                                      "histories.parquet", "index.faiss", "category_embeddings.npy",
                                      "user_tower_unpadded.onnx"}  # fmt: skip
    assert manifest["index"]["factory"] == "HNSW32,Flat" and manifest["index"]["recall@10_vs_exact"] >= 0.95
    assert not list(bundle.glob("*.pkl")) and not list(bundle.glob("*.pt"))
    net = load_model(run / "model.pt")
    assert onnx_parity(net, bundle / "user_tower.onnx", []) <= 1e-5
    assert onnx_parity(net, bundle / "user_tower_unpadded.onnx", [], padded=False) <= 1e-5


def test_encode_history_matches_torch(run_and_bundle, rec):
    net = load_model(run_and_bundle[0] / "model.pt")
    items = rec.item_ids[:5]
    vector = rec.encode_ids(
        items, events=["click"] * 5, dwell=[3.0, 10, -1, 50, 7], ts=[0, 10, 20, 4000, 4001]
    )
    rows = torch.tensor([[rec.catalog.row_of[i] + 1 for i in items]])
    events = torch.tensor([[rec.event_of["click"]] * 5])
    with torch.no_grad():
        ref = net.encode_user(rows, events, torch.tensor([[3.0, 10, -1, 50, 7]]),
                              torch.tensor([[-1.0, 10, 10, 3980, 1]]))[0].numpy()  # fmt: skip
    np.testing.assert_allclose(vector, ref, atol=1e-5)


def test_random_histories_shapes(run_and_bundle):
    net = load_model(run_and_bundle[0] / "model.pt")
    items, events, dwell, gaps = random_histories(net, 2, 3)
    assert items.shape == events.shape == dwell.shape == gaps.shape == (2, 3)


def test_manifest_records_the_onnx_version_and_opset(run_and_bundle):
    """DESIGN.md: the bundle records the torch, onnx and faiss versions it was made with (and the opset)."""
    import onnx

    bundle, manifest = run_and_bundle[1], run_and_bundle[2]
    versions = manifest["versions"]
    assert {"torch", "onnx", "onnx_opset", "faiss", "onnxruntime", "python"} <= set(versions)
    assert versions["onnx"] == onnx.__version__
    for name in ("user_tower.onnx", "user_tower_unpadded.onnx"):
        graph = onnx.load(str(bundle / name), load_external_data=False)
        opsets = {o.domain or "ai.onnx": o.version for o in graph.opset_import}
        assert opsets["ai.onnx"] == versions["onnx_opset"]
