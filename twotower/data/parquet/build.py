"""Parquet dataset -> vocabularies + per-partition sequence shards, written once into a cache entry.

1. streaming pass: record batches of the mapped columns, validated (:mod:`.scan`), each row spilled to its
   user's hash partition (:mod:`.partition`);
2. each partition alone: duplicates and short users dropped, first appearances of users and items collected;
   the vocabularies are ordered by first appearance in file order, as ``pd.factorize`` orders them in memory;
3. each partition alone again: ids encoded, split and cut into windows by the in-memory path's own code
   (:func:`~twotower.data.splits.make_split`, :class:`~twotower.data.sequences.SequenceArrays`,
   :class:`~twotower.data.sequences.TrainWindows`), written as ``.npy`` shards with counts in ``index.json``.

Peak memory follows the partition size (``memory_mb``), not the log: more events make more partitions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from twotower.data.encode import OTHER_EVENT, PAD, _item_features, item_runs, warn_if_sorted_by_item
from twotower.data.loaders import load_items
from twotower.data.parquet.partition import (
    Spill,
    clean_partition,
    event_names,
    first_rows,
    read_ipc,
    user_partitions,
)
from twotower.data.parquet.scan import ROW, Columns, check_columns, count_rows, iter_batches, open_dataset
from twotower.data.schema import DWELL, EVENT, ITEM, TIME, USER, EncodedLog, LoadReport, RawLog
from twotower.data.sequences import SequenceArrays, TrainWindows
from twotower.data.splits import make_split

log = logging.getLogger(__name__)

FORMAT = 2  # shard layout and cleaning rules, part of the cache key (2: duplicates keyed on every column)
BYTES_PER_EVENT = 400  # what cleaning + encoding one partition holds per event (Arrow, numpy, windows)
SHARD_ARRAYS = ("items", "events", "dwell", "gaps", "ts", "windows")


def n_partitions(rows: int, memory_mb: float, min_partitions: int = 1) -> int:
    """Enough hash partitions that one partition's work fits in ``memory_mb``."""
    return max(int(min_partitions), math.ceil(rows * BYTES_PER_EVENT / (float(memory_mb) * 2**20)))


def fingerprint(dataset_files: list[str], items_path: str | None, settings: dict[str, Any]) -> str:
    """Key of a cache entry: every input file's path, size and mtime, and every setting that shapes shards."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(dataset_files) + ([str(items_path)] if items_path else []):
        stat = Path(name).stat()
        digest.update(f"{Path(name).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def build(
    path: str | Path,
    entry: Path,
    columns: Columns,
    settings: dict[str, Any],
    items_path: str | Path | None = None,
    items: dict | None = None,
    name: str = "parquet",
) -> dict[str, Any]:
    """Write the cache entry for ``path`` (see the module doc); returns its index."""
    start = time.perf_counter()
    dataset = open_dataset(path)
    check_columns(dataset, path, columns)
    rows = count_rows(dataset)
    parts = n_partitions(rows, settings["memory_mb"], settings["min_partitions"])
    tmp = entry / "tmp"
    if entry.exists():
        shutil.rmtree(entry)  # an unfinished entry (no index.json) from a killed run
    tmp.mkdir(parents=True)
    log.info("%s: %d rows -> %d partitions (data.memory_mb=%s)", path, rows, parts, settings["memory_mb"])

    spill: Spill | None = None
    rows_read = 0
    for table in iter_batches(dataset, columns, settings["batch_rows"]):
        if spill is None:
            spill = Spill(tmp, parts, table.schema)
        spill.write(table, user_partitions(table[USER], parts))
        rows_read += table.num_rows
    assert spill is not None
    spill.close()
    scanned = time.perf_counter()

    report = LoadReport(rows_read=rows_read)
    user_first, item_first, names = [], [], set()
    runs = np.zeros(3, np.int64)  # item_runs summed over partitions (a user is in one partition)
    for p, raw_path in enumerate(spill.paths):
        clean, dropped = clean_partition(
            read_ipc(raw_path),
            settings["min_events"],
            settings["drop_duplicates"],
            columns.time_col is not None,
        )
        raw_path.unlink()
        for key, value in dropped.items():
            setattr(report, key, getattr(report, key) + value)
        _write_ipc(clean, tmp / f"clean-{p:04d}.arrow")
        if columns.time_col is None:  # rows sorted by (user, file order)
            codes = pc.dictionary_encode(clean[USER]).combine_chunks().indices.to_numpy(zero_copy_only=False)
            runs += item_runs(codes.astype(np.int64), clean[ITEM].to_pandas())
        user_first.append(first_rows(clean, USER))
        item_first.append(first_rows(clean, ITEM))
        names |= event_names(clean)
    users = _by_first_row(pa.concat_tables(user_first), USER)
    items_vocab = _by_first_row(_min_rows(pa.concat_tables(item_first), ITEM), ITEM)
    del user_first, item_first
    if len(users) == 0:
        raise ValueError(f"{name}: no user has at least {settings['min_events']} events after validation")
    events_vocab = [OTHER_EVENT, *sorted(names)]
    _log_dropped(name, report, settings["min_events"])
    if columns.time_col is None:
        warn_if_sorted_by_item(name, runs)

    n_items = len(items_vocab)
    counts = {k: np.zeros(n_items + 1, dtype=np.int64) for k in ("target", "item", "item_user")}
    eval_users = _eval_sample(len(users), settings["eval_max_users"], settings["seed"])
    eval_parts: list[dict[str, np.ndarray]] = []
    shards = []
    has_dwell = False
    for p in range(parts):
        clean = read_ipc(tmp / f"clean-{p:04d}.arrow")
        (tmp / f"clean-{p:04d}.arrow").unlink()
        part = encode_partition(clean, users, items_vocab, events_vocab, name, columns.time_col is not None)
        del clean
        if part.n_interactions == 0:
            continue
        shard = write_shard(part, entry / "shards" / f"p{p:04d}", settings, counts)
        shards.append(shard)
        has_dwell = has_dwell or bool((part.dwell >= 0).any())
        global_users = shard.pop("global_users")  # (U_p,)
        rows = np.repeat(
            np.isin(global_users, eval_users), np.diff(part.user_offsets)
        )  # (E_p,) sampled users
        eval_parts.append({"users": global_users[part.users[rows]], "items": part.items[rows],
                           "ts": part.ts[rows], "events": part.events[rows], "dwell": part.dwell[rows]})  # fmt: skip
    shutil.rmtree(tmp)
    _write_eval(entry / "eval", eval_parts, eval_users)
    categories, category_names, titles = _features(items_path, items, items_vocab, settings, name, report)
    np.save(entry / "item_categories.npy", categories)
    for key, value in counts.items():
        np.save(entry / f"{key}_counts.npy", value)
    _write_ipc(pa.table({USER: users}), entry / "users.arrow")
    _write_ipc(pa.table({ITEM: items_vocab}), entry / "items.arrow")
    index = {
        "format": FORMAT,
        "name": name,
        "source": str(path),
        "settings": settings,
        "partitions": parts,
        "users": len(users),
        "items": n_items,
        "interactions": int(sum(s["events"] for s in shards)),
        "events": events_vocab,
        "categories": category_names,
        "titles": titles,
        "has_time": columns.time_col is not None,
        "has_dwell": has_dwell,
        "targets": int(sum(s["targets"] for s in shards)),
        "shards": shards,
        "report": report.as_dict(),
        "seconds": {"scan": round(scanned - start, 2), "total": round(time.perf_counter() - start, 2)},
    }
    (entry / "index.json").write_text(json.dumps(index, indent=1))  # written last: the entry is complete
    log.info("%s: %d users, %d items, %d shards in %.1f s", name, len(users), n_items, len(shards),
             time.perf_counter() - start)  # fmt: skip
    return index


def encode_partition(
    table: pa.Table, users: pa.Array, items: pa.Array, events: list[str], name: str, has_time: bool
) -> EncodedLog:
    """One cleaned partition as an :class:`EncodedLog` with global item and event indices, users in global
    vocabulary order (each user's events stay in (time, file order))."""
    g = pc.index_in(table[USER], value_set=users).to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.argsort(g, kind="stable")
    g = g[order]
    table = table.take(pa.array(order))
    present, local = np.unique(g, return_inverse=True)
    item_idx = pc.index_in(table[ITEM], value_set=items).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    event_idx = np.zeros(table.num_rows, dtype=np.int64)
    if EVENT in table.column_names:
        found = pc.index_in(table[EVENT], value_set=pa.array(events[1:], pa.string()))
        event_idx = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    dwell = (
        table[DWELL].to_numpy() if DWELL in table.column_names else np.full(table.num_rows, -1.0, np.float32)
    )
    offsets = np.concatenate([[0], np.cumsum(np.bincount(local, minlength=len(present)))]).astype(np.int64)
    return EncodedLog(
        name=name,
        user_ids=[str(u) for u in present],
        item_ids=[],
        event_names=events,
        category_names=[PAD],
        users=local.astype(np.int64),
        items=item_idx,
        ts=table[TIME].to_numpy().astype(np.float64),
        events=event_idx,
        dwell=dwell.astype(np.float32),
        user_offsets=offsets,
        item_categories=np.zeros((1, 1), dtype=np.int64),
        has_time=has_time,
    )  # fmt: skip  (user_ids hold global user indices: shards refer to users by index)


def write_shard(part: EncodedLog, directory: Path, settings: dict[str, Any], counts: dict) -> dict[str, Any]:
    """Split the partition, cut its windows, save the arrays; adds its counts to ``counts``."""
    split = make_split(part, **settings["split"])
    arrays = SequenceArrays.from_log(part)
    windows = TrainWindows(part, split, arrays, settings["max_len"]).windows  # (W, 2) partition-relative
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "items.npy", part.items.astype(np.int32))
    np.save(directory / "events.npy", part.events.astype(np.int16))
    np.save(directory / "dwell.npy", part.dwell.astype(np.float32))
    np.save(directory / "gaps.npy", arrays.gaps.astype(np.float32))
    np.save(directory / "ts.npy", part.ts)
    np.save(directory / "windows.npy", windows)
    train = split.train_mask(part)  # (E,)
    first = np.zeros(part.n_interactions, dtype=bool)
    first[part.user_offsets[:-1]] = True
    counts["target"] += np.bincount(part.items[train & ~first], minlength=len(counts["target"]))
    counts["item"] += np.bincount(part.items[train], minlength=len(counts["item"]))
    pairs = np.unique(part.users[train] * (len(counts["item"]) + 1) + part.items[train])
    counts["item_user"] += np.bincount(pairs % (len(counts["item"]) + 1), minlength=len(counts["item"]))
    lengths = windows[:, 1] - windows[:, 0] - 1
    return {
        "path": str(directory.relative_to(directory.parent.parent)),
        "users": part.n_users,
        "events": part.n_interactions,
        "windows": len(windows),
        "targets": int(lengths.sum()),
        "global_users": np.asarray(part.user_ids, dtype=np.int64),  # popped by build
    }


def _eval_sample(n_users: int, max_users: int | None, seed: int) -> np.ndarray:
    """Sorted global indices of the users whose events are kept in memory for validation and test."""
    if max_users is None or n_users <= max_users:
        return np.arange(n_users, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_users, size=int(max_users), replace=False))


def _write_eval(directory: Path, parts: list[dict[str, np.ndarray]], eval_users: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["users"], kind="stable")  # global user order; each user's events stay in order
    for key, values in merged.items():
        np.save(directory / f"{key}.npy", values[order])
    np.save(directory / "user_index.npy", eval_users)


def _features(items_path, items, items_vocab, settings, name, report) -> tuple[np.ndarray, list, list | None]:
    item_ids = items_vocab.to_pylist()
    frame = load_items(items_path, **(items or {})) if items_path else None
    raw = RawLog(events=pd.DataFrame(), items=frame, name=name, report=report)
    return _item_features(raw, item_ids, settings["max_categories"])


def _by_first_row(table: pa.Table, column: str) -> pa.Array:
    return table.sort_by(ROW)[column].combine_chunks()


def _min_rows(table: pa.Table, column: str) -> pa.Table:
    grouped = table.group_by(column).aggregate([(ROW, "min")])
    return pa.table({column: grouped[column], ROW: grouped[f"{ROW}_min"]})


def _write_ipc(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _log_dropped(name: str, report: LoadReport, min_events: int) -> None:
    if report.duplicates_dropped:
        log.warning("%s: dropped %d duplicate rows (equal in every column)", name, report.duplicates_dropped)
    if report.short_users_dropped:
        log.warning("%s: dropped %d users with fewer than %d events (%d events)", name,
                    report.short_users_dropped, min_events, report.short_user_events_dropped)  # fmt: skip


def settings_dict(**kwargs) -> dict[str, Any]:
    """The settings that shape the shards (and key the cache)."""
    return {"format": FORMAT, **kwargs}
