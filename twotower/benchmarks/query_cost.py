"""What searches in a history cost a request: ``recommend()`` p50 with and without 3 searches, same run.

In-process :class:`~serving.recommender.Recommender` on one thread, one request at a time after warm-up; the
two kinds of request alternate in rounds so both see the same phases of a shared machine. Each history is a
stored user's last ``length`` items as external ids (a one-off history), and the searched one is the same
items with 3 searches between them (words drawn from the bundle's item titles' vocabulary when it has
titles, else fixed words; what the words are does not change the work).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.recommender import Recommender

log = logging.getLogger(__name__)
WORDS = ("red", "running shoes", "star wars episode", "cheap flights paris", "wireless headphones")


def _with_searches(items: list[str], rng: np.random.Generator, n: int = 3) -> list:
    out: list = list(items)
    for j, at in enumerate(
        sorted(rng.choice(np.arange(1, len(items) + 1), size=n, replace=False), reverse=True)
    ):
        out.insert(int(at), {"query": WORDS[(j + int(at)) % len(WORDS)]})
    return out


def query_cost(bundle: str | Path, n_requests: int = 300, rounds: int = 5, length: int = 20, k: int = 10,
               seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """p50 / p95 (ms) of ``recommend()`` for plain histories and the same ones with 3 searches, and the ratio."""
    rec = Recommender.load(bundle, threads=1)
    rng = np.random.default_rng(seed)
    users = [u for u, h in rec.histories.items() if len(h) >= length][:n_requests]
    plain = [[rec.item_ids[r] for r in rec.histories[u].rows[-length:]] for u in users]
    searched = [_with_searches(h, rng) for h in plain]
    for h in plain[:20] + searched[:20]:  # warm-up
        rec.recommend(history=h, k=k)
    times: dict[str, list[float]] = {"plain": [], "three_searches": []}
    for _ in range(rounds):
        for name, histories in (("plain", plain), ("three_searches", searched)):
            for h in histories:
                h = json.loads(json.dumps(h))  # new strings per call, as a decoded request's are (untimed)
                start = time.perf_counter()
                rec.recommend(history=h, k=k)
                times[name].append(time.perf_counter() - start)
    out: dict[str, Any] = {"bundle": str(bundle), "reads_queries": rec.signals.hashing is not None,
                           "history_items": length, "requests_per_kind": len(times["plain"])}  # fmt: skip
    for name, values in times.items():
        ms = np.asarray(values) * 1000
        out[name] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p95_ms": round(float(np.percentile(ms, 95)), 4),
        }
    out["p50_ratio"] = round(out["three_searches"]["p50_ms"] / out["plain"]["p50_ms"], 3)
    return out
