"""Retrieval latency against recall: encode, search, whole ``recommend()`` and a naive eager-PyTorch peer.

One query at a time on one thread after warm-up. For each catalog size and index setting (efSearch / nprobe
sweeps over one built index): p50/p95/p99 of the ONNX encode, the filtered FAISS search, the whole
``Recommender.recommend()`` with history exclusion, recall@10 against exact search under the same exclusion,
the naive peer (the same user tower in eager PyTorch + exact ``torch.topk`` over every item vector) and the
``torch_faiss`` peer (the same eager tower, then the same FAISS index: what ONNX Runtime is measured against).

Two searches are timed: with the workload's query vectors (``search``, the recall curve) and with the user
vectors ``recommend()`` itself searches (``search_user_vector``). Two glue figures: ``recommend`` over the sum of
the encode and search p50s, each timed in its own tight loop (``glue_over_encode_plus_search``: it also counts
what one call costs the other, such as the encode evicting the index from the caches), and ``recommend`` over
the encode and the search of the same history timed back to back (``encode_then_search``,
``glue_over_encode_then_search``: only what ``recommend()`` adds, id mapping, exclusion and the response).

Two ``recommend()`` calls are timed: ``recommend`` with the history as external item ids, mapped to catalog rows
on every call (a one-off history; the ids are decoded from JSON just before each call, untimed, so they are new
strings as a request's are), and ``recommend_known_user`` by user id, whose history the recommender
holds as rows already (as the serving store's per-user cache does): at a million items the id mapping is a
chain of cache misses in a million-entry dict. The timed passes alternate (``rounds``), the encode's too, so
every figure of a setting comes from the same phases of the machine; ``speed_probe`` times a fixed pure-Python
loop between them: a shared machine's phases (its speed can change for seconds at a time) show there, and runs
are compared by it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from tqdm import tqdm

from serving.core.history import History
from serving.core.index import IndexSpec, build_index
from serving.core.search import exact_search
from serving.core.selector import Selector
from serving.recommender import Recommender
from twotower.artifacts import MODEL_FILE, load_model
from twotower.benchmarks.catalog import clustered_catalog, taste_queries
from twotower.benchmarks.service import machine as serving_machine
from twotower.benchmarks.service import percentiles
from twotower.benchmarks.synthetic import synthetic_bundle

log = logging.getLogger(__name__)
SWEEP_FIELD = {"hnsw": "ef_search", "ivf_flat": "nprobe", "ivf_sq": "nprobe", "ivf_pq": "nprobe"}


def timed(fn, items: list, warmup: int = 20) -> list[float]:
    """Seconds per call of ``fn`` over ``items``, after ``warmup`` untimed calls."""
    return interleaved({"fn": fn}, items, rounds=1, warmup=warmup)["fn"]


def speed_probe(_: Any = None) -> int:
    """A fixed pure-Python workload: its time reads the machine's phase (docs/benchmarks.md)."""
    total = 0
    for i in range(2000):
        total += i * i
    return total


def machine(threads: int) -> dict[str, Any]:
    return {**serving_machine(threads), "torch": torch.__version__}


def rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Workload:
    """Histories (for encode / recommend / naive) and query vectors (for search and recall) of one catalog."""

    def __init__(
        self, rec: Recommender, n_queries: int, k: int, synthetic: bool, seed: int = 0, mixture: int = 1
    ) -> None:
        rng = np.random.default_rng(seed)
        users = sorted(rec.histories)
        users = [users[i] for i in rng.choice(len(users), size=min(n_queries, len(users)), replace=False)]
        self.users = users
        self.histories: list[History] = [rec.histories[u] for u in users]
        self.ids = [[rec.item_ids[r] for r in h.rows] for h in self.histories]
        self.bodies = [json.dumps(ids) for ids in self.ids]  # as a request sends them (see measure_setting)
        n = len(self.histories)
        if synthetic:  # realistic directions: an untrained tower's outputs are not aligned with the catalog
            _, centres = clustered_catalog(len(rec.item_ids), rec.bundle.dim, seed=0)
            self.queries = taste_queries(centres, n, seed=seed + 1, mixture=mixture)
        else:
            self.queries = np.stack([rec.encode(h) for h in self.histories])
        self.user_vectors = np.stack([rec.encode(h) for h in self.histories])  # what recommend() searches
        self.k = k
        self.exact = self._exact(rec.vectors)

    def _exact(self, xb: np.ndarray, chunk: int = 64) -> np.ndarray:
        """(Q, k) exact top-k rows under each query's history exclusion (in chunks: (chunk, N) scores)."""
        return np.concatenate([
            exact_search(xb, self.queries[b : b + chunk], self.k, exclude=[h.rows for h in self.histories[b : b + chunk]])[1]
            for b in range(0, len(self.queries), chunk)
        ])  # fmt: skip


def naive_peer(net: torch.nn.Module, rec: Recommender, work: Workload, threads: int) -> dict[str, float]:
    """Eager PyTorch user tower + exact torch.topk over all item vectors, with the same exclusion."""
    torch.set_num_threads(threads)
    xb = torch.from_numpy(rec.vectors)

    def one(i: int) -> None:
        with torch.no_grad():
            scores = xb @ _eager_user(net, rec, work.histories[i])  # (N,)
            scores[torch.from_numpy(work.histories[i].rows)] = float("-inf")
            torch.topk(scores, work.k)

    return percentiles(timed(one, list(range(len(work.histories)))))


def torch_faiss_peer(
    net: torch.nn.Module, rec: Recommender, work: Workload, threads: int
) -> dict[str, float]:
    """The peer users would otherwise build (the TorchRec retrieval example's way): the same user tower in eager
    PyTorch (no grad, ``threads`` threads), then the same FAISS index as the bundle, with the same exclusion."""
    torch.set_num_threads(threads)
    n = len(rec.item_ids)

    def one(i: int) -> None:
        with torch.no_grad():
            user = _eager_user(net, rec, work.histories[i]).numpy()  # (D,)
        with Selector(n, work.histories[i].rows) as selector:
            rec.search(user, work.k, selector)

    return percentiles(timed(one, list(range(len(work.histories)))))


def _eager_user(net: torch.nn.Module, rec: Recommender, history: History) -> torch.Tensor:
    """(D,) user vector of one history from the eager tower, fed as the ONNX tower is."""
    feeds = history.feeds(rec.max_len)
    return net.encode_user(*(torch.from_numpy(feeds[n]) for n in ("items", "events", "dwell", "gaps")))[0]


def interleaved(fns: dict[str, Any], items: list, rounds: int, warmup: int = 20) -> dict[str, list[float]]:
    """Seconds per call of each function over ``items``, the passes alternating ``rounds`` times, so a slow
    phase of a shared machine weighs on every figure alike (their ratios are what the glue figures use).

    A function given as ``(prepare, fn)`` is timed on ``fn(prepare(x))``, ``prepare`` running untimed just
    before each call."""
    fns = {name: fn if isinstance(fn, tuple) else (None, fn) for name, fn in fns.items()}
    for prepare, fn in fns.values():
        for x in items[:warmup]:
            fn(prepare(x) if prepare else x)
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (prepare, fn) in fns.items():
            times = out[name]
            for x in items:
                arg = prepare(x) if prepare else x
                t0 = time.perf_counter()
                fn(arg)
                times.append(time.perf_counter() - t0)
    return out


def measure_setting(rec: Recommender, work: Workload, rounds: int = 3) -> dict[str, Any]:
    n = len(rec.item_ids)
    idx = list(range(len(work.histories)))
    found = {}

    def search(i: int) -> None:
        with Selector(n, work.histories[i].rows) as selector:
            found[i] = rec.search(work.queries[i], work.k, selector)[1]

    search_s = timed(search, idx)
    recall = float(np.mean([len(set(found[i]) & set(work.exact[i])) / work.k for i in idx]))

    def search_own(i: int) -> None:  # the very query recommend() will search: the tower's user vector
        with Selector(n, work.histories[i].rows) as selector:
            rec.search(work.user_vectors[i], work.k, selector)

    resolved = [rec.resolve(ids).history for ids in work.ids]  # what recommend(history=ids) encodes

    def encode_then_search(i: int) -> None:  # the two library calls alone, back to back, as in a request
        query = rec.encode(resolved[i])
        with Selector(n, resolved[i].rows) as selector:
            rec.search(query, work.k, selector)

    times = interleaved({
        "encode": lambda i: rec.encode(work.histories[i]),
        "search_user_vector": search_own,
        "encode_then_search": encode_then_search,
        "recommend": (  # raw ids, mapped per call: new strings, just decoded (untimed) as a request's body gives
            lambda i: json.loads(work.bodies[i]),  # them, not the catalog's own objects (cached hash, same object)
            lambda ids: rec.recommend(history=ids, k=work.k),
        ),
        "recommend_known_user": lambda i: rec.recommend(user_id=work.users[i], k=work.k),  # stored history
        "speed_probe": speed_probe,
    }, idx, rounds)  # fmt: skip
    stats = {name: percentiles(values) for name, values in times.items()}
    for name in ("recommend", "recommend_known_user"):
        stats[name]["qps"] = float(len(times[name]) / sum(times[name]))
    encode, own, bare = stats["encode"], stats["search_user_vector"], stats["encode_then_search"]
    whole, known = stats["recommend"], stats["recommend_known_user"]
    return {"recall@10": recall, "search": percentiles(search_s), **stats,
            "glue_over_encode_plus_search": whole["p50_ms"] / (encode["p50_ms"] + own["p50_ms"]) - 1.0,
            "glue_over_encode_then_search": whole["p50_ms"] / bare["p50_ms"] - 1.0,
            "glue_known_user_over_encode_then_search": known["p50_ms"] / bare["p50_ms"] - 1.0}  # fmt: skip


def index_settings(kinds: list[str], base: dict[str, Any]) -> list[IndexSpec]:
    """One built index per kind; the swept parameter varies at search time only."""
    return [IndexSpec.from_dict({**base, "kind": kind}) for kind in kinds]


def run_latency(
    n_items: list[int], out: Path, kinds: list[str], sweep: dict[str, list[int]], index_base: dict[str, Any],
    queries: int = 300, k: int = 10, threads: int = 1, dim: int = 64, bundle: str | None = None,
    run_dir: str | None = None, build_threads: int | None = None, query_mixture: int = 1, rounds: int = 3,
) -> dict[str, Any]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n in n_items:
        synthetic = bundle is None
        path = Path(bundle) if bundle else synthetic_bundle(out / "bundles", n, dim)
        runs = Path(run_dir) if run_dir else (out / "bundles" / f"run-{n}-d{dim}" if synthetic else None)
        rec = Recommender.load(path, threads=threads)
        work = Workload(rec, queries, k, synthetic, mixture=query_mixture)
        net = load_model(runs / MODEL_FILE).eval() if runs and (runs / MODEL_FILE).exists() else None
        naive = naive_peer(net, rec, work, threads) if net is not None else None
        for spec in tqdm(index_settings(kinds, index_base), desc=f"{len(rec.item_ids)} items", unit="index"):
            faiss.omp_set_num_threads(build_threads or os.cpu_count() or 1)
            before, start = rss_mb(), time.perf_counter()
            index, spec = build_index(rec.vectors, spec)
            build_s, memory = time.perf_counter() - start, max(rss_mb() - before, 0.0)
            faiss.omp_set_num_threads(threads)
            rec.index, rec.spec = index, spec
            values = sweep.get(spec.kind) or [None]
            for value in values:
                setting = replace(spec, **{SWEEP_FIELD[spec.kind]: value}) if value is not None else spec
                rec.spec = setting
                figures = measure_setting(rec, work, rounds)
                eager = torch_faiss_peer(net, rec, work, threads) if net is not None else None
                params = {k: v for k, v in asdict(setting).items() if v is not None}
                results.append({"n_items": len(rec.item_ids), "index": setting.factory_string(), "params": params,
                                **figures, "naive": naive,
                                "speedup_vs_naive": naive["p50_ms"] / figures["recommend"]["p50_ms"] if naive else None,
                                "torch_faiss": eager,  # eager tower + this index: ONNX's gain over it
                                "speedup_vs_torch_faiss": eager["p50_ms"] / figures["recommend"]["p50_ms"] if eager else None,
                                "build_seconds": build_s, "index_bytes": int(faiss.serialize_index(index).nbytes),
                                "peak_rss_growth_mb": memory})  # fmt: skip
                log.info("%s %s: recall@10 %.3f, recommend p50 %.3f ms", len(rec.item_ids),
                         setting.factory_string(), figures["recall@10"], figures["recommend"]["p50_ms"])  # fmt: skip
    return {"machine": machine(threads), "k": k, "queries": queries, "query_mixture": query_mixture,
            "rounds": rounds, "results": results}  # fmt: skip
