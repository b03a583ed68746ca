"""Export a training run as a serving bundle: ONNX user tower, item vectors, FAISS index, manifest.

``export_bundle(run_dir, out, spec)`` reads only the run directory (``model.pt``, ``data/``, ``metrics.json``)
and checks every approximation it writes against its exact twin: ONNX against PyTorch on random and real
histories, the index against brute-force inner product.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch
from omegaconf import OmegaConf

from serving.core import bundle as bundle_files
from serving.core.history import histories_from_frame
from serving.core.index import IndexSpec, build_index, search_parameters
from serving.core.intent import IntentSettings
from serving.core.listsettings import ListSettings
from serving.core.search import exact_search
from serving.core.signals import Signals
from twotower.artifacts import MODEL_FILE, load_model
from twotower.encoders import CausalSelfAttention
from twotower.graph_inputs import INPUTS, SIGNAL_INPUTS, input_names, random_histories
from twotower.model import TwoTower

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5


class ItemInputTable(torch.nn.Module):
    """The item tower's output for every item index, frozen into one lookup (one Gather in the graph)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)  # (N + 1, D), row 0 = padding

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(items, self.table)  # (..., D)


class UserTowerGraph(torch.nn.Module):
    """The exported graph: (B, L) items, events, dwell seconds, gap seconds -> (B, D) user vectors.

    The history items' inputs (id embedding + category mean) are precomputed into a table, which removes the
    per-request category gathers; :func:`onnx_parity` checks the result against the unmodified model.
    """

    def __init__(self, net: TwoTower, padded: bool = True) -> None:
        super().__init__()
        self.padded = padded
        self.net = copy.deepcopy(net).eval()
        with torch.no_grad():
            table = self.net.item_tower(torch.arange(net.config.n_items + 1))  # (N + 1, D)
        self.net.user_tower.item_tower = ItemInputTable(table)
        for module in self.net.modules():  # fewer graph nodes, same numbers (checked by onnx_parity)
            if isinstance(module, CausalSelfAttention):
                module.folded = True

    def forward(self, items, events, dwell, gaps, queries=None, context=None, user_features=None):
        return self.net.encode_user(items, events, dwell, gaps, padded=self.padded, queries=queries,
                                    context=context, user_features=user_features)  # fmt: skip


def export_onnx(net: TwoTower, path: Path, padded: bool = True) -> None:
    """Dynamo-based export with dynamic batch and history length (``padded=False``: rows without padding)."""
    for noisy in ("onnxscript", "onnx_ir"):  # their graph passes log every rewrite at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    graph = UserTowerGraph(net.eval(), padded).eval()
    names = input_names(net.config)
    example = dict(zip(names, random_histories(net, 2, 5), strict=True))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    shapes = {name: {0: batch} if name == "user_features" else {0: batch, 1: length} for name in names}
    program = torch.onnx.export(
        graph,
        (),
        kwargs=example,
        dynamo=True,
        dynamic_shapes=shapes,
        input_names=list(names),
        output_names=["user_vector"],
    )
    program.save(str(path))


def onnx_parity(net: TwoTower, path: Path, real: list[tuple[np.ndarray, ...]], padded: bool = True) -> float:
    """Max |ONNX - PyTorch| over random batches of several shapes and real histories.

    The reference is always the model's padded path, so the unpadded graph is checked against it too."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cases = [
        random_histories(net, b, n, seed=b * 1000 + n) for b, n in ((1, 1), (3, 7), (8, net.config.max_len))
    ]
    names = input_names(net.config)
    if padded:  # ragged rows: the tail of every other row is padding
        items, *rest = random_histories(net, 4, 9, seed=7)
        items[::2, 5:] = 0
        cases.append((items, *rest))
        if net.config.uses_start:  # rows of padding alone: the user features' vector
            items, *rest = random_histories(net, 3, 1, seed=8)
            cases.append((torch.zeros_like(items), *rest))
    cases += [tuple(torch.tensor(a) for a in arrays) for arrays in real]  # (1, L) each, no padding
    worst = 0.0
    with torch.no_grad():
        for case in cases:
            named = dict(zip(names, case, strict=True))
            ref = net.encode_user(**named).numpy()
            out = session.run(None, {name: t.numpy() for name, t in named.items()})[0]
            worst = max(worst, float(np.abs(ref - out).max()))
    return worst


def model_signals(net: TwoTower, vocab: dict[str, Any]) -> Signals:
    """What ``net`` reads beyond the four inputs, with a run's vocabularies (``vocab.json``), as the bundle's
    manifest gives them to serving."""
    return Signals.from_manifest({"model": net.config.to_dict(), "signals": vocab.get("signals") or {}})


def real_batches(
    histories: pd.DataFrame,
    item_row: dict[str, int],
    events: list[str],
    max_len: int,
    n: int = 64,
    signals: Signals | None = None,
    users: pd.DataFrame | None = None,
) -> list[tuple[np.ndarray, ...]]:
    """Up to ``n`` users' stored histories as (1, L) model inputs (the arrays serving feeds the graph, through
    serving's own :class:`~serving.core.signals.Signals` when the model reads more than the four inputs)."""
    signals = signals or Signals()
    arrays = signals.stored_arrays(histories)
    table = histories_from_frame(histories, item_row, {name: i for i, name in enumerate(events)}, arrays)
    features = signals.stored_features(users)
    names = INPUTS + signals.inputs
    return [tuple(signals.feeds(h, max_len, features.get(u))[name] for name in names)
            for u, h in list(table.items())[:n]]  # fmt: skip


def index_recall(index: faiss.Index, spec: IndexSpec, xb: np.ndarray, xq: np.ndarray, k: int = 10) -> float:
    """Recall@k of the index against exact inner-product search on the same queries."""
    _, exact = exact_search(xb, xq, k)
    _, approx = index.search(xq, k, params=search_parameters(index, spec))
    hits = [len(set(a[a >= 0]) & set(e)) for a, e in zip(approx, exact, strict=True)]
    return float(np.sum(hits) / exact.size)


def rerank_settings(run: Path, rerank: dict[str, Any] | None) -> dict[str, Any]:
    """The bundle's re-rank settings: ``rerank`` if given, else the run's (``config.yaml``), else the defaults.

    A list knob set to ``auto`` takes the value training picked on validation (``metrics.json``), else 0."""
    if rerank is None and (run / "config.yaml").exists():
        rerank = OmegaConf.to_container(OmegaConf.load(run / "config.yaml")).get("rerank")
    list_cfg = dict((rerank or {}).get("list") or {})
    auto = [name for name, value in list_cfg.items() if value == "auto"]
    if auto:
        picked = {}
        if (run / "metrics.json").exists():
            served = json.loads((run / "metrics.json").read_text()).get("served") or {}
            picked = (served.get("rerank") or {}).get("list") or {}
        list_cfg.update({name: picked.get(name, 0.0) for name in auto})
    return {"intent": IntentSettings.from_dict((rerank or {}).get("intent")).as_dict(),
            "list": ListSettings.from_dict(list_cfg).as_dict()}  # fmt: skip


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    spec: IndexSpec | None = None,
    rerank: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a verified bundle from a training run; returns the manifest.

    ``rerank``: ``{"intent": {...}}`` settings of serving's session-intent re-rank (default: the run's)."""
    run, out = Path(run_dir), Path(out)
    if not (run / MODEL_FILE).exists():
        raise FileNotFoundError(f"{run / MODEL_FILE}: not found (is {run} a training run directory?)")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    net = load_model(run / MODEL_FILE)
    vocab = json.loads((run / "data" / "vocab.json").read_text())
    item_ids: list[str] = vocab["items"]
    with torch.no_grad():
        item_vectors = net.encode_items().numpy().astype(np.float32)  # (N, D)
    np.save(out / bundle_files.ITEM_EMBEDDINGS, item_vectors, allow_pickle=False)
    with torch.no_grad():  # (C, D): a new item's vector is the normalised mean of its categories' rows
        category_table = net.item_tower.category_embedding.weight.numpy().astype(np.float32)
    np.save(out / bundle_files.CATEGORY_EMBEDDINGS, category_table, allow_pickle=False)
    (out / bundle_files.ITEM_IDS).write_text(json.dumps(item_ids))
    shutil.copyfile(run / "data" / "items.parquet", out / bundle_files.ITEMS)
    shutil.copyfile(run / "data" / "histories.parquet", out / bundle_files.HISTORIES)

    histories = pd.read_parquet(out / bundle_files.HISTORIES)
    users = None
    if net.config.uses_start and (run / "data" / bundle_files.USERS).exists():
        shutil.copyfile(run / "data" / bundle_files.USERS, out / bundle_files.USERS)
        users = pd.read_parquet(out / bundle_files.USERS)
    row = {item: i for i, item in enumerate(item_ids)}
    vocab_signals = vocab.get("signals") or {}
    signals = model_signals(net, vocab)
    real = real_batches(histories, row, vocab["events"], net.config.max_len, signals=signals, users=users)
    parity = 0.0
    for name, padded in ((bundle_files.USER_TOWER, True), (bundle_files.USER_TOWER_UNPADDED, False)):
        export_onnx(net, out / name, padded)
        worst = onnx_parity(net, out / name, real, padded)
        if worst > PARITY_TOLERANCE:
            raise RuntimeError(f"{name} differs from PyTorch by {worst:.2e} > {PARITY_TOLERANCE}")
        parity = max(parity, worst)

    spec = spec or IndexSpec()
    build_start = time.perf_counter()
    index, spec = build_index(item_vectors, spec)
    build_seconds = time.perf_counter() - build_start
    faiss.write_index(index, str(out / bundle_files.INDEX))
    with torch.no_grad():
        queries = torch.cat(
            [
                net.encode_user(**dict(zip(input_names(net.config), map(torch.tensor, r), strict=True)))
                for r in real
            ]
        ).numpy()
    recall = index_recall(index, spec, item_vectors, queries) if len(queries) else 1.0

    metrics_file = run / "metrics.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    reranking = rerank_settings(run, rerank)
    served = run_metrics.get("served", {})  # measured at training with these settings, or not quoted
    served_test = served.get("test", {}) if served.get("rerank") == reranking else {}
    graph = onnx.load(str(out / bundle_files.USER_TOWER), load_external_data=False)
    opset = next(int(o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx"))  # as exported
    manifest = {
        "format_version": bundle_files.FORMAT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_version": f"{vocab.get('dataset', 'model')}-{bundle_files.sha256(run / MODEL_FILE)[:12]}",
        "dataset": run_metrics.get("dataset", {"name": vocab.get("dataset")}),
        "model": net.config.to_dict(),
        "dim": int(item_vectors.shape[1]),
        "max_len": int(net.config.max_len),
        "inputs": {
            "items": "int64 (B, L), 1-based item rows, 0 = pad",
            "events": "int64 (B, L) event index",
            "dwell": "float32 (B, L) seconds, -1 unknown",
            "gaps": "float32 (B, L) seconds since the previous event, -1 unknown",
            **{name: SIGNAL_INPUTS[name] for name in signals.inputs},
        },  # fmt: skip
        "signals": {  # what serving maps a request's strings with (serving.core.signals)
            "query_hashing": vocab_signals.get("query_hashing") if signals.hashing else None,
            "context": vocab_signals.get("context") if signals.context else None,
            "user_features": vocab_signals.get("user_features") if signals.features else None,
        },
        "graphs": {
            bundle_files.USER_TOWER: "right-padded rows of any length (batches)",
            bundle_files.USER_TOWER_UNPADDED: "rows without padding (one live history); same inputs and vectors",
        },
        "events": vocab["events"],
        "categories": _category_names(vocab, len(category_table)),
        "normalize": bool(net.normalize),
        "has_time": vocab.get("has_time", True),
        "index": {
            **spec.to_dict(),
            "factory": spec.factory_string(),
            "metric": "inner_product",
            "recall@10_vs_exact": recall,
            "build_seconds": round(build_seconds, 3),
        },  # fmt: skip
        "counts": {
            "items": len(item_ids),
            "users_with_history": int(histories["user_id"].nunique()),
            "history_events": len(histories),
        },  # fmt: skip
        "metrics": run_metrics.get("test", {}),
        "rerank": reranking,
        "metrics_served": served_test,  # the model with the re-rank above, as served (empty: not measured)
        "onnx_parity_max_abs": parity,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,  # the exporter's graph library, and the graphs' default-domain opset
            "onnx_opset": opset,
            "faiss": faiss.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "files": bundle_files.file_entries(out),
    }
    (out / bundle_files.MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("bundle %s: %d items, index %s recall@10 %.3f, ONNX parity %.1e, %.1fs", out, len(item_ids),
             spec.factory_string(), recall, parity, time.perf_counter() - start)  # fmt: skip
    return manifest


def _category_names(vocab: dict[str, Any], rows: int) -> list[str]:
    """One name per category-table row (row 0 = no category)."""
    names = list(vocab.get("categories") or ["<pad>"])[:rows]
    return names + [f"<unused-{i}>" for i in range(len(names), rows)]
