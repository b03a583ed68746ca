"""The Parquet path's cost: write a synthetic partitioned log in chunks (untimed), then build its
vocabularies and sequence shards in a fresh process, timing it and reading its peak RSS."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

EVENT_NAMES = ("view", "click", "add_to_cart", "purchase")
COLUMNS = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp", "event_col": "event",
           "dwell_col": "dwell_s"}  # fmt: skip


def write_synthetic(
    out: Path, events: int, users: int, items: int, chunk: int = 1_000_000, seed: int = 0
) -> dict[str, Any]:
    """A log of ``events`` rows as a hive-partitioned dataset (``day=N/part-0.parquet``, one file per chunk of
    ``chunk`` rows): users drawn uniformly, items by Zipf popularity, time rising chunk by chunk, so a user's
    events are spread over every file as in a real export. Memory: one chunk."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, items + 1))
    cdf /= cdf[-1]
    shutil.rmtree(out, ignore_errors=True)
    names = pa.array(EVENT_NAMES)
    for day, start in enumerate(range(0, events, chunk)):
        n = min(chunk, events - start)
        item = np.minimum(np.searchsorted(cdf, rng.random(n)), items - 1)
        table = pa.table({
            "user_id": rng.integers(0, users, n, dtype=np.int64),
            "item_id": pa.compute.binary_join_element_wise("i", pa.array(item.astype(str)), ""),
            "timestamp": 1_700_000_000 + day * 86_400 + np.sort(rng.integers(0, 86_400, n)),
            "event": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 4, n, dtype=np.int8)), names),
            "dwell_s": np.round(rng.exponential(30.0, n), 1).astype(np.float32),
        })  # fmt: skip
        folder = out / f"day={day:05d}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet", row_group_size=256_000)
    return {"events": events, "users": users, "items": items, "files": -(-events // chunk)}


def build_child(data_dir: str, cache_dir: str, settings_json: str) -> None:
    """The timed work, in its own process: the streaming build; prints its summary and its own peak RSS."""
    from twotower.data.parquet import stream_log
    from twotower.data.parquet.scan import Columns

    settings = json.loads(settings_json)
    start = time.perf_counter()
    data = stream_log(data_dir, Columns(**COLUMNS), cache_dir=cache_dir, name="bench", **settings)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"users": data.index["users"], "items": data.index["items"],
                      "interactions": data.index["interactions"], "shards": len(data.index["shards"]),
                      "partitions": data.index["partitions"], "seconds": seconds, "peak_rss_mb": peak_mb,
                      "stages": data.index["seconds"]}))  # fmt: skip


def run_bench(
    events: int,
    out: Path,
    users: int | None = None,
    items: int | None = None,
    settings: dict[str, Any] | None = None,
    reuse_data: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Write (or reuse) the synthetic dataset, then time a fresh process building its shards."""
    users = users or max(100, events // 100)
    items = items or max(100, min(1_000_000, events // 100))
    data_dir = out / f"log-{events}-{users}-{items}-{seed}"
    if not (reuse_data and (data_dir / "_done").exists()):
        start = time.perf_counter()
        write_synthetic(data_dir, events, users, items, seed=seed)
        (data_dir / "_done").touch()  # the loader reads *.parquet only
        log.info("wrote %d events to %s in %.1f s (untimed)", events, data_dir, time.perf_counter() - start)
    cache = out / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # a fresh build, never a reused entry
    settings = {"min_events": 3, "max_len": 50, **(settings or {})}
    command = [
        sys.executable,
        "-m",
        "twotower.benchmarks.data",
        str(data_dir),
        str(cache),
        json.dumps(settings),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the build process failed ({done.returncode}):\n{done.stderr[-4000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "events": events,
        "users": child["users"],
        "items": child["items"],
        "seconds": round(child["seconds"], 2),  # the build inside the fresh process
        "peak_rss_mb": round(max(child["peak_rss_mb"], children_peak), 1),
        "process_seconds": round(wall, 2),  # with the interpreter's start and imports
        "interactions": child["interactions"],
        "partitions": child["partitions"],
        "stages": child["stages"],
        "settings": settings,
        "generated": {"users": users, "items": items, "seed": seed},
    }


if __name__ == "__main__":  # the fresh process run_bench times
    logging.basicConfig(level=logging.WARNING)
    build_child(sys.argv[1], sys.argv[2], sys.argv[3])
