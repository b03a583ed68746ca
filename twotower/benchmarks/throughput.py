"""Batch-scoring throughput: users/s for top-k with the index on all cores, beside exact (BLAS) scoring.

Both paths run :class:`serving.batch.BatchScorer` code: encode in ONNX batches, search, drop history. The exact
rate replaces the index by a brute-force matrix product over every item (chunked to bound memory) and gives the
reference top-k for recall@k of the index path.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from serving.batch import BatchScorer
from serving.core.history import History
from serving.core.index import IndexSpec, build_index
from serving.core.search import exact_search
from serving.recommender import Recommender
from twotower.benchmarks.latency import machine
from twotower.benchmarks.synthetic import synthetic_bundle


def exact_top_k(scorer: BatchScorer, histories: list[History], block: int = 64) -> tuple[np.ndarray, float]:
    """(B, k) exact rows under history exclusion, and the seconds it took (encode included)."""
    rec, k = scorer.rec, scorer.k
    start = time.perf_counter()
    queries = scorer.encode(histories)
    out = np.concatenate([  # (b, N) scores per block, BLAS on all cores
        exact_search(rec.vectors, queries[b : b + block], k, exclude=[h.rows for h in histories[b : b + block]])[1]
        for b in range(0, len(histories), block)
    ])  # fmt: skip
    return out, time.perf_counter() - start


def run_throughput(
    n_items: int, out: Path, n_users: int = 20_000, k: int = 100, exact_users: int = 1_000,
    spec: IndexSpec | None = None, search_values: list[int] | None = None, chunk: int = 4096,
    threads: int | None = None, dim: int = 64, bundle: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    threads = threads or os.cpu_count() or 1
    path = Path(bundle) if bundle else synthetic_bundle(out / "bundles", n_items, dim)
    rec = Recommender.load(path, threads=threads)
    faiss.omp_set_num_threads(threads)
    base = sorted(rec.histories)
    histories = [rec.histories[base[i % len(base)]] for i in range(n_users)]  # stored users, cycled
    spec = spec or IndexSpec(kind="hnsw", ef_construction=40)
    start = time.perf_counter()
    rec.index, rec.spec = build_index(rec.vectors, spec)
    build_s = time.perf_counter() - start
    scorer = BatchScorer(rec, k=k)
    reference, exact_s = exact_top_k(scorer, histories[:exact_users])
    start = time.perf_counter()
    for i in range(0, n_users, chunk):  # the ONNX encode alone: the ceiling of any index
        scorer.encode(histories[i : i + chunk])
    encode_rate = n_users / (time.perf_counter() - start)
    rows = []
    field = "ef_search" if rec.spec.kind == "hnsw" else "nprobe"
    for value in search_values or [getattr(rec.spec, field)]:
        rec.spec = replace(rec.spec, **{field: value})
        scorer.top_k(histories[: min(chunk, 512)])  # warm-up
        start = time.perf_counter()
        found = np.concatenate([scorer.top_k(histories[i : i + chunk])[1] for i in range(0, n_users, chunk)])
        seconds = time.perf_counter() - start
        recall = float(
            np.mean([len(set(a) & set(b)) / k for a, b in zip(found[:exact_users], reference, strict=True)])
        )
        rows.append({"index": rec.spec.factory_string(), field: value, "users_per_s": n_users / seconds,
                     f"recall@{k}": recall, "seconds": seconds})  # fmt: skip
    return {"machine": machine(threads), "n_items": len(rec.item_ids), "users": n_users, "k": k,
            "chunk": chunk, "index_build_seconds": build_s, "results": rows, "encode_users_per_s": encode_rate,
            "exact": {"users": min(exact_users, n_users), "users_per_s": min(exact_users, n_users) / exact_s}}  # fmt: skip
