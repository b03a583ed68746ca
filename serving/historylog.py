"""A raw history log for the batch jobs (``histories=FILE`` of batch scoring and audiences). No torch.

CSV or Parquet with ``user_id, item_id`` and optionally ``event, dwell_s, ts``. Ids are read as the strings
they are (``"0196"`` stays ``"0196"``, never a number), stripped as training strips them; ``ts`` is unix
seconds or date-time text (ISO 8601, UTC unless it carries an offset); bad values are refused naming the
file, column and row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("user_id", "item_id", "event", "dwell_s", "ts")


class HistoryLogError(ValueError):
    """A histories file that cannot be read as documented; the message names file, column and row."""


def read_history_log(path: str | Path) -> pd.DataFrame:
    """The log's rows, ids as stripped strings, ``dwell_s`` / ``ts`` as float seconds, oldest first per user."""
    path = str(path)
    try:
        if path.endswith(".parquet"):
            frame = pd.read_parquet(path)
        else:
            sep = "\t" if path.endswith((".tsv", ".tab")) else ","
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise HistoryLogError(f"{path}: cannot be read as CSV or Parquet: {error}") from error
    missing = {"user_id", "item_id"} - set(frame.columns)
    if missing:
        raise HistoryLogError(f"{path}: missing columns {sorted(missing)} (need user_id, item_id)")
    out = pd.DataFrame(index=frame.index)
    for name in ("user_id", "item_id", "event"):
        if name in frame:
            out[name] = _text(frame[name], path, name, required=name != "event")
    if "dwell_s" in frame:
        out["dwell_s"] = _numbers(frame["dwell_s"], path, "dwell_s")
    if "ts" in frame:
        out["ts"] = _seconds(frame["ts"], path)
        out = out.sort_values(["user_id", "ts"], kind="stable")
    return out.reset_index(drop=True)


def _row(frame_index: int, path: str) -> str:
    return f"row {frame_index + 2}" if not path.endswith(".parquet") else f"row {frame_index}"


def _text(values: pd.Series, path: str, name: str, required: bool) -> pd.Series:
    """Ids and names as stripped strings (no float ``12.0``, no ``nan``); an empty required one is refused."""
    text = values.map(_id_text)
    if required:
        empty = np.flatnonzero((text == "").to_numpy())
        if len(empty):
            raise HistoryLogError(f"{path}: column {name}: empty at {_row(int(empty[0]), path)}")
    return text


def _id_text(value: object) -> str:
    """One cell as text: None / NaN empty, a whole float written as the integer it holds (a Parquet id column
    with gaps is float64 in pandas: 12.0 is the id "12"), anything else as its stripped string."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else str(int(value)) if float(value).is_integer() else str(value)
    return str(value).strip()


def _numbers(values: pd.Series, path: str, name: str) -> pd.Series:
    """Floats; an empty cell is NaN (unknown), anything else that is not a number is refused."""
    text = _text(values, path, name, required=False)
    numbers = pd.to_numeric(text.where(text != "", None), errors="coerce")
    bad = numbers.isna().to_numpy() & (text != "").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise HistoryLogError(f"{path}: column {name}: {text.iloc[i]!r} at {_row(i, path)} is not a number")
    return numbers.astype(np.float64)


def _seconds(values: pd.Series, path: str) -> pd.Series:
    """Unix seconds, or date-time text / timestamps converted to UTC seconds."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        return numbers.astype(np.float64)
    stamps = pd.to_datetime(values.astype(str).str.strip(), utc=True, errors="coerce", format="ISO8601")
    bad = stamps.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise HistoryLogError(
            f"{path}: column ts: {values.iloc[i]!r} at {_row(i, path)} is neither unix seconds nor an ISO 8601 time"
        )
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
