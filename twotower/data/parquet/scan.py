"""The streaming pass over a Parquet dataset: record batches of the mapped columns, validated and put in the
canonical form (string ids, float seconds, event names, dwell seconds, global file-order row numbers).

Nothing here holds more than one record batch. Errors name the file, the column and the row within the file,
with the CSV loader's wording (its time and dwell checks are reused as they are).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from twotower.data.loaders import parse_dwell
from twotower.data.parquet.timefmt import dataset_format
from twotower.data.schema import CONTEXT_PREFIX, DWELL, EVENT, ITEM, QUERY, TIME, USER, DataError
from twotower.data.timeparse import parse_time

log = logging.getLogger(__name__)

ROW = "row"  # global file-order row number: the stable tie-break the in-memory path gets from file order


@dataclass(frozen=True)
class Columns:
    """The source column of each canonical column (``None``: absent)."""

    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    event_col: str | None = None
    dwell_col: str | None = None
    time_format: str | None = None
    query_col: str | None = None  # search text (in memory only: the streamed shards carry no signal)
    context_cols: tuple[str, ...] = ()  # per-event context columns (likewise)
    time_unit: str = "s"  # unit of numeric epochs: s, ms, us, ns; raw: seconds, unchecked

    def mapping(self) -> dict[str, str | None]:
        """Option -> source column; the signal options only when set (a streamed log's fingerprint stays)."""
        out = {"user_col": self.user_col, "item_col": self.item_col, "time_col": self.time_col,
               "event_col": self.event_col, "dwell_col": self.dwell_col}  # fmt: skip
        if self.query_col is not None:
            out["query_col"] = self.query_col
        out.update({f"context_cols[{i}]": c for i, c in enumerate(self.context_cols)})
        return out

    @property
    def signals(self) -> list[str]:
        """The signal options set (``data.query_col``, ``data.context_cols``)."""
        return [
            name for name, on in (("query_col", self.query_col), ("context_cols", self.context_cols)) if on
        ]


def open_dataset(path: str | Path) -> ds.Dataset:
    """A directory of Parquet files (hive partitions read as columns) or one file; clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive", exclude_invalid_files=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot be read as a Parquet dataset ({type(exc).__name__}: {exc})") from exc
    if not dataset.files:
        raise DataError(f"{path}: no Parquet files")
    return dataset


def check_columns(dataset: ds.Dataset, path: str | Path, columns: Columns) -> None:
    """Fail naming the option and the column when a mapped column is absent (the CSV loader's message)."""
    names = dataset.schema.names
    for option, column in columns.mapping().items():
        if column is not None and column not in names:
            raise DataError(f"{path}: column {column!r} (data.{option}) not found; columns are {names}")


def count_rows(dataset: ds.Dataset) -> int:
    """Rows in the dataset from the Parquet footers (no data read)."""
    return sum(f.count_rows() for f in _fragments(dataset))


def _fragments(dataset: ds.Dataset) -> list[ds.Fragment]:
    return sorted(dataset.get_fragments(), key=lambda f: f.path)  # file order = sorted paths


def iter_batches(dataset: ds.Dataset, columns: Columns, batch_rows: int = 262_144) -> Iterator[pa.Table]:
    """Canonical tables (user, item, ts[, event][, dwell_s], row) of at most ``batch_rows`` rows, in file order."""
    wanted = [c for c in columns.mapping().values() if c is not None]
    wanted = list(dict.fromkeys(wanted))
    inferred = columns.time_col is not None and columns.time_format is None
    fmt = dataset_format(dataset, columns.time_col, batch_rows) if inferred else columns.time_format
    row = 0
    for fragment in _fragments(dataset):
        scanner = ds.Scanner.from_fragment(
            fragment, schema=dataset.schema, columns=wanted, batch_size=batch_rows, use_threads=False
        )
        offset = 0
        rows_in_file = 0
        for batch in scanner.to_batches():
            if batch.num_rows == 0:
                continue
            yield canonical(batch, columns, fragment.path, offset, row, fmt, inferred and fmt is not None)
            offset += batch.num_rows
            row += batch.num_rows
            rows_in_file += batch.num_rows
        if rows_in_file == 0:
            log.warning("%s: no data rows", fragment.path)
    if row == 0:
        raise DataError(f"{Path(dataset.files[0]).parent}: no data rows")


def canonical(
    batch: pa.RecordBatch,
    columns: Columns,
    file: str,
    offset: int,
    row: int,
    time_format: str | None = None,
    inferred: bool = False,
) -> pa.Table:
    """One record batch -> canonical columns; ``offset`` is the batch's first row in ``file``; ``time_format``:
    the dataset's (set, or ``inferred`` from every file by :func:`.timefmt.dataset_format`)."""
    n = batch.num_rows
    query = None if columns.query_col is None else _text(batch.column(columns.query_col))
    searches = None if query is None else pc.is_valid(query)  # a search row may leave the item empty
    out: dict[str, pa.Array] = {
        USER: ids(batch.column(columns.user_col), file, columns.user_col, offset),
        ITEM: ids(batch.column(columns.item_col), file, columns.item_col, offset, searches),
    }
    if query is not None:
        out[QUERY] = query
    for col in columns.context_cols:
        out[CONTEXT_PREFIX + col] = _text(batch.column(col))
    if columns.time_col is None:
        out[TIME] = pa.array(np.arange(row, row + n, dtype=np.float64))
    else:
        out[TIME] = pa.array(
            times(batch.column(columns.time_col), file, columns, offset, time_format, inferred)
        )
    if columns.event_col is not None:
        out[EVENT] = _text(batch.column(columns.event_col))
    if columns.dwell_col is not None:
        values = batch.column(columns.dwell_col).to_pandas()
        out[DWELL] = pa.array(_shifted(parse_dwell, offset, values, Path(file), columns.dwell_col, True))
    out[ROW] = pa.array(np.arange(row, row + n, dtype=np.int64))
    return pa.table(out)


def _text(values: pa.Array) -> pa.Array:
    """Strings, stripped; empty -> null (the CSV loader's rule for events, queries and context)."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def ids(values: pa.Array, file: str, column: str, offset: int, optional: pa.Array | None = None) -> pa.Array:
    """External ids as strings (integral floats lose their '.0', text is stripped); an empty id is an error,
    except on rows where ``optional`` (bool) is true (a search event's item), which are left null."""
    if pa.types.is_floating(values.type):
        finite = pc.drop_null(values)
        if len(finite) and pc.all(pc.equal(pc.floor(finite), finite)).as_py():
            values = pc.cast(values, pa.int64())
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    text = pc.cast(values, pa.string())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        text = pc.utf8_trim_whitespace(text)
    empty = pc.or_kleene(pc.is_null(text), pc.equal(text, "")).fill_null(True)
    if optional is not None:
        allowed = pc.and_(empty, optional)
        text = pc.if_else(allowed, pa.scalar(None, pa.string()), text)
        empty = pc.and_(empty, pc.invert(optional))
    if pc.any(empty).as_py():
        bad = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{file}: empty id in column {column!r} at row {offset + bad + 1}")
    return text


def times(
    values: pa.Array, file: str, columns: Columns, offset: int, time_format: str | None, inferred: bool
) -> np.ndarray:
    """(n,) float64 seconds: Arrow timestamps and dates as datetimes, numbers and text parsed like CSV (one
    shared parser, and text in the one format of the whole dataset, so ``data=csv`` and ``data=parquet`` read a
    time column alike)."""
    if pa.types.is_date(values.type):
        values = pc.cast(values, pa.timestamp("s"))  # to_pandas: datetime64 (timestamps already are)
    series = values.to_pandas()
    return _shifted(
        parse_time,
        offset,
        series,
        Path(file),
        columns.time_col,
        True,
        time_format,
        columns.time_unit,
        inferred,
    )


_ROW = re.compile(r" at row (\d+)")


def _shifted(check, offset: int, *args) -> np.ndarray:
    """Run one of the CSV loader's checks on a batch; its batch-relative row number becomes the file's."""
    try:
        return check(*args)
    except DataError as exc:
        message = _ROW.sub(lambda m: f" at row {int(m.group(1)) + offset}", str(exc), count=1)
        raise DataError(message) from exc


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Canonical table -> the events frame of a :class:`RawLog` (event names as objects, None where missing)."""
    frame = table.drop_columns([ROW]).to_pandas()
    for name in frame.columns:
        if name in (EVENT, QUERY) or str(name).startswith(CONTEXT_PREFIX):
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame
