"""Users hashed into partitions: the streaming pass spills each batch's rows to its users' partition files, and
each partition is then cleaned alone (duplicates, short users) with the in-memory path's rules.

The hash is CRC-32 of the user id's UTF-8 bytes (the same partition on every machine and run, unlike
Python's salted ``hash``).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twotower.data.parquet.scan import ROW
from twotower.data.schema import DWELL, EVENT, ITEM, TIME, USER


def user_partitions(users: pa.Array, n_partitions: int) -> np.ndarray:
    """(n,) partition of each row's user: crc32(id) mod P, hashed once per distinct id in the batch."""
    encoded = (
        pc.dictionary_encode(users).combine_chunks()
        if isinstance(users, pa.ChunkedArray)
        else (pc.dictionary_encode(users))
    )
    keys = np.fromiter(
        (zlib.crc32(u.encode()) % n_partitions for u in encoded.dictionary.to_pylist()),
        dtype=np.int64,
        count=len(encoded.dictionary),
    )
    return keys[encoded.indices.to_numpy(zero_copy_only=False)]


class Spill:
    """One Arrow IPC file per partition, appended batch by batch (no partition is held in memory)."""

    def __init__(self, directory: Path, n_partitions: int, schema: pa.Schema) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = [directory / f"raw-{p:04d}.arrow" for p in range(n_partitions)]
        self._sinks = [pa.OSFile(str(p), "wb") for p in self.paths]
        self._writers = [pa.ipc.new_stream(s, schema) for s in self._sinks]

    def write(self, table: pa.Table, partitions: np.ndarray) -> None:
        order = np.argsort(partitions, kind="stable")  # rows keep file order inside a partition
        bounds = np.searchsorted(partitions[order], np.arange(len(self.paths) + 1))
        for p, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if hi > lo:
                self._writers[p].write_table(table.take(pa.array(order[lo:hi])))

    def close(self) -> None:
        for writer, sink in zip(self._writers, self._sinks, strict=True):
            writer.close()
            sink.close()


def read_ipc(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_stream(source).read_all()


def clean_partition(
    table: pa.Table, min_events: int, drop_duplicates: bool, has_time: bool = True
) -> tuple[pa.Table, dict[str, int]]:
    """Drop identical events (the first in file order stays; the in-memory path's key: user, item, event, dwell
    and time; a log without time drops only a user's consecutive repeats) and users with fewer than
    ``min_events`` events; sort by (user, time, file order). Returns the rows and what was dropped."""
    users = pc.dictionary_encode(table[USER]).combine_chunks()
    u = users.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ts = table[TIME].to_numpy()
    row = table[ROW].to_numpy()
    keep = np.ones(len(u), dtype=bool)
    if drop_duplicates and len(u):
        keys = [u, _codes(table[ITEM])]  # (n,) each
        if EVENT in table.column_names:
            keys.append(_codes(table[EVENT]))
        if DWELL in table.column_names:
            keys.append(table[DWELL].to_numpy())
        if has_time:
            keys.append(ts)
        # with time equal keys sort together; without, each user's rows stay in file order, so only a repeat
        # of the row just before is dropped (:func:`twotower.data.encode.repeats`)
        order = np.lexsort((row, *reversed(keys))) if has_time else np.lexsort((row, u))
        same = np.ones(len(u) - 1, dtype=bool)
        for key in keys:
            same &= key[order][1:] == key[order][:-1]
        keep[order[1:][same]] = False
    duplicates = int((~keep).sum())
    counts = np.bincount(u[keep], minlength=len(users.dictionary))
    short_user = counts < min_events
    short = keep & short_user[u]
    report = {
        "duplicates_dropped": duplicates,
        "short_users_dropped": int((short_user & (counts > 0)).sum()),
        "short_user_events_dropped": int(short.sum()),
    }
    keep &= ~short
    index = np.flatnonzero(keep)
    index = index[np.lexsort((row[index], ts[index], u[index]))]
    return table.take(pa.array(index)), report


def _codes(values: pa.ChunkedArray) -> np.ndarray:
    """(n,) int64 code of each value (equal values, equal codes; null -> -1)."""
    encoded = pc.dictionary_encode(values).combine_chunks()
    return encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def first_rows(table: pa.Table, column: str) -> pa.Table:
    """Each distinct value of ``column`` with the first (smallest) row it appears on."""
    grouped = table.group_by(column).aggregate([(ROW, "min")])
    return pa.table({column: grouped[column], ROW: grouped[f"{ROW}_min"]})


def event_names(table: pa.Table) -> set[str]:
    if EVENT not in table.column_names:
        return set()
    return {e for e in pc.unique(table[EVENT]).to_pylist() if e is not None}
