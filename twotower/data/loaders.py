"""Readers for interaction logs (CSV / Parquet with column mapping) and item tables.

Every reader returns a :class:`RawLog` with canonical column names and string ids. Problems in the
file raise :class:`DataError` naming the file, the column and the row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.data.schema import (
    CATEGORIES,
    CONTEXT_PREFIX,
    DWELL,
    EVENT,
    ITEM,
    QUERY,
    TIME,
    TITLE,
    USER,
    DataError,
    LoadReport,
    RawLog,
    as_str_ids,
)
from twotower.data.signals import add_hour_of_week
from twotower.data.timeparse import parse_time
from twotower.data.timeparse import row_label as _row_label

log = logging.getLogger(__name__)


def read_table(
    path: str | Path,
    sep: str = ",",
    header: bool = True,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Read a CSV/TSV or Parquet file as strings-preserving DataFrame; clear errors when unusable."""
    path = Path(path)
    sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)  # `data.sep='\t'` arrives as two characters from the CLI
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    suffixes = "".join(path.suffixes).lower()
    try:
        if ".parquet" in suffixes or suffixes.endswith(".pq"):
            frame = pd.read_parquet(path)
            if names:
                if len(names) != frame.shape[1]:
                    raise DataError(f"{path}: {len(names)} names given for {frame.shape[1]} columns")
                frame.columns = list(names)
        else:
            frame = pd.read_csv(
                path,
                sep=sep,
                header=0 if header else None,
                names=list(names) if names else None,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding=encoding,
                engine="c" if len(sep) == 1 else "python",
                skip_blank_lines=True,
            )
    except DataError:
        raise
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be parsed ({type(exc).__name__}: {exc})") from exc
    if frame.empty:
        raise DataError(f"{path}: no data rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def require_columns(frame: pd.DataFrame, path: Path, columns: dict[str, str | None]) -> None:
    """Fail naming the option and the column when a mapped column is absent."""
    for option, column in columns.items():
        if column is not None and column not in frame.columns:
            raise DataError(
                f"{path}: column {column!r} (data.{option}) not found; columns are {list(frame.columns)}"
            )


def _ids(
    frame: pd.DataFrame, column: str, path: Path, header: bool, optional: pd.Series | None = None
) -> pd.Series:
    """String ids; an empty id is an error, except on rows where ``optional`` (bool) is true (left as None)."""
    values = frame[column]
    missing = values.isna()
    if not pd.api.types.is_numeric_dtype(values):
        missing |= values.astype(str).str.strip().eq("")
    if optional is not None and (missing & optional).any():
        ids = _ids(frame.loc[~(missing & optional)], column, path, header)
        return ids.reindex(frame.index).astype(object).where(~(missing & optional), None)
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(f"{path}: empty id in column {column!r} at {_row_label(path, row, header)}")
    ids = as_str_ids(values)
    return ids if pd.api.types.is_numeric_dtype(values) else ids.str.strip()  # object or StringDtype text


def parse_dwell(values: pd.Series, path: Path, column: str, header: bool) -> np.ndarray:
    """Dwell seconds: empty means unknown (-1); text or negative values are errors."""
    text = not pd.api.types.is_numeric_dtype(values)  # object or StringDtype (pandas 3 reads text as str)
    blank = values.astype("string").str.strip().eq("").fillna(False).astype(bool) if text else False
    empty = values.isna() | blank
    numbers = pd.to_numeric(values.where(~empty), errors="coerce")
    bad_mask = (numbers.isna() & ~empty) | (numbers < 0) | ~np.isfinite(numbers.fillna(0))
    if bad_mask.any():
        bad = int(np.flatnonzero(bad_mask.to_numpy())[0])
        raise DataError(
            f"{path}: invalid dwell time {values.iloc[bad]!r} in column {column!r} at "
            f"{_row_label(path, bad, header)} (expected seconds >= 0 or empty)"
        )
    return numbers.fillna(-1.0).to_numpy(dtype=np.float32)


def load_events(
    path: str | Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    event_col: str | None = None,
    dwell_col: str | None = None,
    sep: str = ",",
    header: bool = True,
    names: Sequence[str] | None = None,
    time_format: str | None = None,
    encoding: str = "utf-8",
    time_unit: str = "s",
    query_col: str | None = None,
    context_cols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read an interaction log and map its columns to the canonical ones (ids kept as strings).

    ``time_format`` / ``time_unit``: how the time column is read (:mod:`twotower.data.timeparse`).
    ``query_col``: search text; a row with a query may leave the item empty (a search event).
    ``context_cols``: per-event categorical context (device, country, ...), kept as ``context:<name>`` strings."""
    path = Path(path)
    frame = read_table(path, sep=sep, header=header, names=names, encoding=encoding)
    require_columns(
        frame,
        path,
        {
            "user_col": user_col,
            "item_col": item_col,
            "time_col": time_col,
            "event_col": event_col,
            "dwell_col": dwell_col,
            "query_col": query_col,
            **{f"context_cols[{i}]": c for i, c in enumerate(context_cols or ())},
        },
    )
    query = None
    if query_col is not None:
        query = frame[query_col].astype("string").str.strip()
        query = query.where(query.notna() & query.ne(""), None).astype(object)
    searches = None if query is None else query.notna()
    out = pd.DataFrame(
        {USER: _ids(frame, user_col, path, header), ITEM: _ids(frame, item_col, path, header, searches)}
    )
    if query is not None:
        out[QUERY] = query
    for col in context_cols or ():
        values = frame[col].astype("string").str.strip()
        out[CONTEXT_PREFIX + str(col)] = values.where(values.notna() & values.ne(""), None).astype(object)
    if time_col is None:
        log.warning("%s: no time column; file order is used as the event order", path)
        out[TIME] = np.arange(len(frame), dtype=np.float64)
    else:
        out[TIME] = parse_time(frame[time_col], path, time_col, header, time_format, time_unit)
    if event_col is not None:
        events = frame[event_col].astype("string").str.strip()
        out[EVENT] = events.where(events.notna() & events.ne(""), None).astype(object)
    if dwell_col is not None:
        out[DWELL] = parse_dwell(frame[dwell_col], path, dwell_col, header)
    return out


def load_items(
    path: str | Path,
    item_col: str = "item_id",
    category_col: str | None = "category",
    category_sep: str | None = "|",
    title_col: str | None = None,
    sep: str = ",",
    header: bool = True,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Read an item table: id, categories (multi-valued with ``category_sep``) and an optional title."""
    path = Path(path)
    frame = read_table(path, sep=sep, header=header, names=names, encoding=encoding)
    require_columns(
        frame,
        path,
        {"items.item_col": item_col, "items.category_col": category_col, "items.title_col": title_col},
    )
    out = pd.DataFrame({ITEM: _ids(frame, item_col, path, header)})
    if category_col is not None:
        cats = frame[category_col].astype("string").fillna("")
        split = cats.str.split(category_sep, regex=False) if category_sep else cats.map(lambda c: [c])
        out[CATEGORIES] = [[c.strip() for c in row if c.strip()] for row in split]
    else:
        out[CATEGORIES] = [[] for _ in range(len(frame))]
    if title_col is not None:
        out[TITLE] = frame[title_col].astype("string").fillna("").astype(object)
    duplicated = out[ITEM].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(
            f"{path}: duplicate item id {out[ITEM].iloc[row]!r} at {_row_label(path, row, header)}"
        )
    return out


def load_users(
    path: str | Path,
    user_col: str = "user_id",
    feature_cols: Sequence[str] | None = None,
    sep: str = ",",
    header: bool = True,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """A static user-features table: ``user`` + one string column per feature (default: every other column).
    Empty values read as unknown; a duplicate user id is an error naming the row."""
    path = Path(path)
    frame = read_table(path, sep=sep, header=header, names=names, encoding=encoding)
    features = list(feature_cols) if feature_cols else [c for c in frame.columns if c != user_col]
    require_columns(
        frame,
        path,
        {"users.user_col": user_col, **{f"users.feature_cols[{i}]": c for i, c in enumerate(features)}},
    )
    out = pd.DataFrame({USER: _ids(frame, user_col, path, header)})
    for col in features:
        values = frame[col].astype("string").str.strip()
        out[str(col)] = values.where(values.notna() & values.ne(""), None).astype(object)
    duplicated = out[USER].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(
            f"{path}: duplicate user id {out[USER].iloc[row]!r} at {_row_label(path, row, header)}"
        )
    return out


def load_csv_log(
    path: str | Path,
    items_path: str | Path | None = None,
    name: str | None = None,
    items: dict | None = None,
    users_path: str | Path | None = None,
    users: dict | None = None,
    hour_of_week: bool = False,
    **columns,
) -> RawLog:
    """Hydra-facing loader for ``data=csv``: events file plus optional item and user-feature tables.
    ``hour_of_week``: add the hour of the week (UTC) of each event as a context column (needs a time column)."""
    check_hour_of_week(path, hour_of_week, columns.get("time_col", "timestamp") is not None)
    events = load_events(path, **columns)
    item_frame = load_items(items_path, **(items or {})) if items_path else None
    user_frame = load_users(users_path, **(users or {})) if users_path else None
    report = LoadReport(rows_read=len(events))
    has_time = columns.get("time_col", "timestamp") is not None
    if hour_of_week:
        events = add_hour_of_week(events)
    return RawLog(events=events, items=item_frame, name=name or Path(path).stem, report=report,
                  has_time=has_time, users=user_frame)  # fmt: skip


def check_hour_of_week(path: str | Path, hour_of_week: bool, has_time: bool) -> None:
    """``data.hour_of_week`` is read from the time column: refuse it on a log without one."""
    if hour_of_week and not has_time:
        raise DataError(
            f"{path}: data.hour_of_week=true needs a time column, but data.time_col is null; set data.time_col "
            f"to the log's time column or data.hour_of_week=false"
        )
