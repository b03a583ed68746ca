"""``data=parquet``: a directory of Parquet files (hive-partitioned as Spark writes them) read with
``pyarrow.dataset``. Small logs become a :class:`~twotower.data.schema.RawLog` for the in-memory path; large
ones are streamed into sequence shards (:mod:`.build`) and come back as a :class:`.store.StreamLog`."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from twotower.data.loaders import check_hour_of_week, load_items, load_users
from twotower.data.parquet.build import build, fingerprint, settings_dict
from twotower.data.parquet.scan import (
    Columns,
    check_columns,
    count_rows,
    iter_batches,
    open_dataset,
    to_frame,
)
from twotower.data.parquet.store import StreamLog, load_entry
from twotower.data.schema import DataError, LoadReport, RawLog
from twotower.data.signals import add_hour_of_week

log = logging.getLogger(__name__)

__all__ = ["StreamLog", "load_parquet_log", "stream_log"]


def load_parquet_log(
    path: str | Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    event_col: str | None = None,
    dwell_col: str | None = None,
    time_format: str | None = None,
    items_path: str | Path | None = None,
    items: Mapping | None = None,
    name: str | None = None,
    stream: bool | str = "auto",
    stream_min_rows: int = 5_000_000,
    query_col: str | None = None,
    context_cols: Sequence[str] | None = None,
    users_path: str | Path | None = None,
    users: Mapping | None = None,
    hour_of_week: bool = False,
    time_unit: str = "s",
    **stream_settings: Any,
) -> RawLog | StreamLog:
    """Hydra loader of ``data=parquet``: in memory below ``stream_min_rows`` rows (``stream=auto``), streamed
    into shards above (or always with ``stream=true``). ``stream_settings``: see :func:`stream_log`.

    Searches (``query_col``), context (``context_cols``, ``hour_of_week``) and user features (``users_path``)
    are read as ``data=csv`` reads them, on the in-memory path; the streamed shards carry items, events, dwell
    and time only, so a streamed log with any of them set is refused (naming them) rather than read without."""
    columns = Columns(user_col, item_col, time_col, event_col, dwell_col, time_format, query_col,
                      tuple(context_cols or ()), time_unit)  # fmt: skip
    check_hour_of_week(path, hour_of_week, time_col is not None)
    dataset = open_dataset(path)
    check_columns(dataset, path, columns)
    rows = count_rows(dataset)
    name = name or Path(path).stem
    if stream == "auto":
        stream = rows >= stream_min_rows
    if str(stream).lower() in ("true", "1"):
        signals = columns.signals + [
            n for n, on in (("users_path", users_path), ("hour_of_week", hour_of_week)) if on
        ]
        if signals:
            raise DataError(
                f"{path}: {rows} rows are streamed into shards, which carry items, events, dwell and time only: "
                f"data.{', data.'.join(signals)} cannot be read there (set data.stream=false to read the log in "
                f"memory, or leave them unset)"
            )
        return stream_log(path, columns, items_path=items_path, items=items, name=name, **stream_settings)
    log.info("%s: %d rows, read in memory (data.stream_min_rows=%d)", path, rows, stream_min_rows)
    batches = list(iter_batches(dataset, columns, int(stream_settings.get("batch_rows", 262_144))))
    events = to_frame(pa.concat_tables(batches))
    if hour_of_week:
        events = add_hour_of_week(events)
    item_frame = load_items(items_path, **dict(items or {})) if items_path else None
    user_frame = load_users(users_path, **dict(users or {})) if users_path else None
    return RawLog(events=events, items=item_frame, name=name, report=LoadReport(rows_read=len(events)),
                  has_time=time_col is not None, users=user_frame)  # fmt: skip


def stream_log(
    path: str | Path,
    columns: Columns,
    cache_dir: str | Path,
    items_path: str | Path | None = None,
    items: Mapping | None = None,
    name: str = "parquet",
    min_events: int = 3,
    drop_duplicates: bool = True,
    split: Mapping | None = None,
    max_len: int = 50,
    max_categories: int = 16,
    memory_mb: float = 256,
    min_partitions: int = 8,
    batch_rows: int = 262_144,
    eval_max_users: int | None = 10_000,
    seed: int = 0,
    wait_s: float = 3600.0,
) -> StreamLog:
    """The shards of ``path`` from ``cache_dir/<fingerprint>`` (built once; a rerun with the same files and
    settings reuses them)."""
    split = dict(split or {"kind": "leave_last_out"})
    if split.get("kind", "leave_last_out") != "leave_last_out":
        raise ValueError(f"data=parquet streams leave-last-out splits only, not {split.get('kind')!r}")
    settings = settings_dict(
        columns=columns.mapping(), time_format=columns.time_format, time_unit=columns.time_unit,
        min_events=int(min_events), drop_duplicates=bool(drop_duplicates), split=split, max_len=int(max_len),
        max_categories=int(max_categories), memory_mb=float(memory_mb), min_partitions=int(min_partitions),
        batch_rows=int(batch_rows), eval_max_users=eval_max_users, seed=int(seed), items=dict(items or {}),
    )  # fmt: skip
    dataset = open_dataset(path)
    entry = Path(cache_dir) / fingerprint(list(dataset.files), items_path and str(items_path), settings)
    if (entry / "index.json").exists():
        log.info("%s: reusing the shards in %s", path, entry)
    elif _local_rank() == 0:
        # built beside the entry and renamed into place: a rank or node building at the same time cannot
        # leave a half-written entry behind, and the first rename wins
        staging = entry.with_name(f"{entry.name}.building-{os.getpid()}")
        build(path, staging, columns, settings, items_path=items_path, items=items, name=name)
        try:
            staging.rename(entry)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        _wait_for(entry / "index.json", wait_s)
    return load_entry(entry)


def _local_rank() -> int:
    """This process's rank on its machine under a DDP launcher (Lightning, torchrun, SLURM); 0 otherwise."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def _wait_for(index: Path, timeout_s: float) -> None:
    """Other ranks of a machine wait for its local rank 0 to finish the shards (polling the index file)."""
    deadline = time.monotonic() + timeout_s
    while not index.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no shards at {index.parent} after {timeout_s:.0f} s (built by local rank 0)")
        time.sleep(1.0)
