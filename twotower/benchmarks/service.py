"""Serving latency benchmark: in-process encode / search / recommend percentiles, and HTTP throughput of the
service against a do-nothing FastAPI endpoint measured in the same run (the HTTP ceiling of the machine)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI

from serving.core.listsettings import KNOBS_OFF
from serving.core.selector import Selector
from serving.historystore import seed_rows
from serving.live import LiveService
from serving.recommender import Recommender
from serving.store import SQLiteHistoryStore
from twotower.benchmarks.servers import RedisServer, free_port, wait_ready

noop_app = FastAPI()


@noop_app.post("/noop")
async def noop(body: dict) -> dict:
    return {"ok": True}


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}  # fmt: skip


def in_process(rec: Recommender, users: list[str], k: int = 10, repeats: int = 3) -> dict:
    """One query at a time on one thread, back to back, after a warm-up pass.

    Each step runs over all users in its own pass (a step interleaved with others would be timed with their
    data in its caches), and the passes alternate ``repeats`` times so a drift in the machine's speed hits
    every step alike. ``encode_padded_graph``: the same encodes through the bundle's batch graph, the
    unpadded graph's exact twin. ``recommend``: with the bundle's defaults (``ranking``: its list knobs);
    ``recommend_knobs_off``: the session intent without the list knobs; ``recommend_without_rerank``: the
    model's ranking alone (``rerank=False``); ``reranked_share``: how many of the users' histories the
    session intent acts on.
    """
    histories = [rec.histories[user] for user in users]
    queries = [rec.encode(history) for history in histories]
    n_items = len(rec.item_ids)

    def encode(i: int) -> None:
        rec.encode(histories[i])

    def encode_padded(i: int) -> None:
        rec.encode(histories[i], padded_graph=True)

    def search(i: int) -> None:
        with Selector(n_items, histories[i].rows) as selector:
            rec.search(queries[i], k, selector)

    def recommend(i: int) -> None:
        rec.recommend(user_id=users[i], k=k)

    def knobs_off(i: int) -> None:
        rec.recommend(user_id=users[i], k=k, **KNOBS_OFF)

    def model_only(i: int) -> None:
        rec.recommend(user_id=users[i], k=k, rerank=False)

    steps = {"recommend": recommend, "encode": encode, "search": search, "encode_padded_graph": encode_padded,
             "recommend_knobs_off": knobs_off, "recommend_without_rerank": model_only}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(repeats + 1):  # the first pass warms up
        for name, step in steps.items():
            for i in range(len(users)):
                t0 = time.perf_counter()
                step(i)
                elapsed = time.perf_counter() - t0
                if rep:
                    times[name].append(elapsed)
    out = {name: percentiles(t) for name, t in times.items()}
    out["recommend"]["qps"] = float(len(times["recommend"]) / sum(times["recommend"]))
    reranked = [rec.recommend(user_id=u, k=k).lift is not None for u in users]
    out["reranked_share"] = float(np.mean(reranked)) if reranked else 0.0
    out["history_length_mean"] = float(np.mean([len(rec.histories[u].rows) for u in users]))
    out["ranking"] = rec.ranking.as_dict()  # the list knobs ``recommend`` ran with
    return out


def with_store(
    rec: Recommender, users: list[str], state_dir: str, k: int = 10, repeats: int = 3, redis_url: str = ""
) -> dict:
    """``LiveService.recommend(user_id)``: history read from the store on every call (the version check
    always, the events when they changed), then encode + search. ``reads_only``: no writes in between.
    ``mixed``: every other call first posts an event for the user (a durable commit), so half the reads see a
    history this process just extended and half an unchanged one. The SQLite store in ``state_dir``, or with
    ``redis_url`` the Redis one (under a key prefix of its own, deleted afterwards)."""
    if redis_url:
        from serving.redisstore import RedisHistoryStore

        store = RedisHistoryStore(redis_url, rec.max_len + 1, prefix=f"twotower-bench-{os.getpid()}:")
    else:
        store = SQLiteHistoryStore(state_dir, max_events=rec.max_len + 1)
    live = LiveService(rec, store)
    store.seed(seed_rows(rec), source=rec.model_version)
    items = rec.item_ids
    for user in users:  # warm-up: every user's history read once
        live.recommend(user_id=user, k=k)
    reads = []
    for _ in range(repeats):  # reads alone: the store's version check + the cached history
        for user in users:
            t0 = time.perf_counter()
            live.recommend(user_id=user, k=k)
            reads.append(time.perf_counter() - t0)
    fresh, cached = [], []
    for rep in range(repeats):
        for j, user in enumerate(users):
            changed = (j + rep) % 2 == 0
            if changed:
                live.ingest([{"user_id": user, "item_id": items[(j * 7 + rep) % len(items)], "event": None}])
            t0 = time.perf_counter()
            live.recommend(user_id=user, k=k)
            (fresh if changed else cached).append(time.perf_counter() - t0)
    if redis_url:
        for keys in _chunks(list(store.r.scan_iter(store.prefix + "*", count=1000)), 1000):
            store.r.delete(*keys)
    store.close()
    both = fresh + cached
    return {
        "reads_only": {**percentiles(reads), "qps": float(len(reads) / sum(reads))},
        "mixed": {**percentiles(both), "qps": float(len(both) / sum(both))},
        "after_new_event": percentiles(fresh),
        "unchanged_history": percentiles(cached),
    }


def _chunks(values: list, size: int) -> list[list]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _start(args: list[str], ready_url: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        wait_ready(proc, ready_url, 60, f": {args}")
    except RuntimeError:
        proc.kill()
        raise
    return proc


async def _load(url: str, bodies: list[dict], seconds: float, connections: int) -> dict:
    import httpx

    done, errors = 0, 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def worker(offset: int) -> None:
            nonlocal done, errors
            i = offset
            while time.perf_counter() < stop:
                response = await client.post(url, json=bodies[i % len(bodies)])
                i += connections
                done += 1
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(connections)))
        elapsed = time.perf_counter() - start
    return {"requests": done, "errors": errors, "rps": done / elapsed}


def http(
    bundle: Path, users: list[str], seconds: float = 10.0, connections: int = 8, rounds: int = 4
) -> dict:
    """Requests/s of POST /recommend and of a do-nothing POST endpoint under the same load.

    Both servers run (idle when not loaded); the load alternates between them in ``rounds`` slices of
    ``seconds / rounds``, so a drift in the machine's speed hits both sides alike.
    """
    port_a, port_b = free_port(), free_port()
    state = tempfile.mkdtemp(prefix="twotower-bench-state-")
    procs = []
    try:
        procs.append(_start(["-m", "serving", "--bundle", str(bundle), "--port", str(port_a), "--state-dir", state],
                            f"http://127.0.0.1:{port_a}/readyz"))  # fmt: skip
        procs.append(_start(["-m", "uvicorn", "twotower.benchmarks.service:noop_app", "--port", str(port_b), "--log-level",
                             "warning"], f"http://127.0.0.1:{port_b}/docs"))  # fmt: skip
        bodies = [{"user_id": u, "k": 10} for u in users]
        urls = {
            "recommend": f"http://127.0.0.1:{port_a}/recommend",
            "noop": f"http://127.0.0.1:{port_b}/noop",
        }
        for url in urls.values():
            asyncio.run(_load(url, bodies, 1.0, connections))  # warm-up
        totals = {name: {"requests": 0, "errors": 0, "seconds": 0.0} for name in urls}
        for _ in range(rounds):
            for name, url in urls.items():
                part = asyncio.run(_load(url, bodies, seconds / rounds, connections))
                totals[name]["requests"] += part["requests"]
                totals[name]["errors"] += part["errors"]
                totals[name]["seconds"] += part["requests"] / part["rps"] if part["rps"] else 0.0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(state, ignore_errors=True)
    out = {name: {"requests": t["requests"], "errors": t["errors"], "rps": t["requests"] / t["seconds"]}
           for name, t in totals.items()}  # fmt: skip
    return {"connections": connections, "rounds": rounds, **out,
            "ratio": out["recommend"]["rps"] / out["noop"]["rps"] if out["noop"]["rps"] else 0.0}  # fmt: skip


def machine(threads: int = 1) -> dict:
    """The CPU (model name where Linux tells it), cores, per-query threads and the runtime's versions."""
    import faiss
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "faiss": faiss.__version__}  # fmt: skip


def run(
    bundle: str | Path,
    out: str | Path | None = None,
    n_users: int = 300,
    http_seconds: float = 0.0,
    store: str = "",
) -> dict:
    """``store``: "" SQLite only; ``redis://host:port/db`` or ``redis`` (a throwaway local redis-server with
    the recommended persistence) adds the same measurement with Redis in the path, in the same run."""
    rec = Recommender.load(bundle, threads=1)
    rng = np.random.default_rng(0)
    all_users = sorted(rec.histories)
    users = [
        all_users[i] for i in rng.choice(len(all_users), size=min(n_users, len(all_users)), replace=False)
    ]
    result = {"machine": machine(), "bundle": str(bundle), "model_version": rec.model_version,
              "index": rec.manifest["index"]["factory"], "n_items": len(rec.item_ids),
              "in_process": in_process(rec, users)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="twotower-bench-store-") as state:
        result["in_process_with_store"] = with_store(rec, users, state)
        if store:
            with contextlib.ExitStack() as stack:
                url = store
                if store == "redis":
                    url = stack.enter_context(RedisServer(Path(state) / "redis")).url
                redis_part = with_store(rec, users, state, redis_url=url)
            sqlite_part = result["in_process_with_store"]
            redis_part["p50_vs_sqlite"] = {
                mode: redis_part[mode]["p50_ms"] / sqlite_part[mode]["p50_ms"]
                for mode in ("reads_only", "mixed")
            }
            result["in_process_with_redis"] = redis_part
    if http_seconds > 0:
        result["http"] = http(Path(bundle), users, seconds=http_seconds)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result
