"""Timestamps of an interaction log -> float64 unix seconds, with one rule for the whole column.

A column is read one way from its first row to its last: numbers are unix epochs in ``data.time_unit``
(seconds by default) and must fall between 1970 and 2100 (``data.time_unit=raw``: any finite number, read as
seconds unchecked); date-time strings are ISO 8601 or one format inferred from the column (never per row, so
``05/01/2024`` and ``20/01/2024`` cannot be read with different day/month orders; a Parquet dataset read batch
by batch infers it once for all its files with :mod:`twotower.data.timeformat`, the rule CSV uses); native datetimes (Parquet) are converted exactly. ``data.time_format`` pins a ``strptime``
format (also for numbers such as ``20240130``); ``data.time_format=mixed`` asks for pandas' per-row parsing.
Every refusal names the file, the column, the row and the option that fixes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.data.schema import DataError
from twotower.data.timeformat import Where, infer_format, row_label, to_datetime

__all__ = ["RAW", "UNITS", "Where", "datetime_seconds", "parse_time", "row_label", "text_format"]

log = logging.getLogger(__name__)

UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}  # data.time_unit -> seconds per unit
RAW = "raw"  # data.time_unit=raw: any finite number as seconds, unchecked (relative or simulated times)
_UNIT_NAMES = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    RAW: "seconds",
}
EARLIEST, LATEST = 0.0, 4_102_444_800.0  # 1970-01-01 and 2100-01-01 UTC: a plausible epoch in seconds
_EPOCH = pd.Timestamp(0, tz="UTC")


def datetime_seconds(values: pd.Series) -> np.ndarray:
    """(n,) float64 seconds of a datetime64 Series (naive read as UTC, tz-aware converted); NaT -> NaN."""
    utc = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return (utc - _EPOCH).dt.total_seconds().to_numpy(dtype=np.float64)


def parse_time(
    values: pd.Series,
    path: Path,
    column: str,
    header: bool,
    time_format: str | None = None,
    time_unit: str = "s",
    inferred: bool = False,
) -> np.ndarray:
    """(n,) float64 unix seconds of a time column; the first bad row is named with the option that fixes it.

    ``inferred``: ``time_format`` was inferred from the whole dataset (a Parquet dataset's files), not set."""
    if time_unit not in UNITS and time_unit != RAW:
        raise DataError(f"data.time_unit={time_unit!r}: expected one of {', '.join([*UNITS, RAW])}")
    where = Where(path, column, header, values)
    if pd.api.types.is_datetime64_any_dtype(values):
        seconds = datetime_seconds(values)
        where.no_missing(np.isnan(seconds))
        return seconds
    if time_format is not None:
        parsed = _with_format(_as_text(values), time_format, where, inferred)
        return where.finite(_parsed_seconds(parsed, where))
    as_number = pd.to_numeric(values, errors="coerce")
    if as_number.notna().all():
        return where.finite(_epochs(as_number, time_unit, where))
    if as_number.notna().mean() > 0.5:  # mostly numbers: the non-numbers are errors, not dates
        where.unparsable(int(np.flatnonzero(as_number.isna().to_numpy())[0]))
    if pd.api.types.infer_dtype(values, skipna=True) in ("date", "datetime", "datetime64"):
        return where.finite(_parsed_seconds(pd.to_datetime(values, errors="coerce", utc=True), where))
    return where.finite(_parsed_seconds(infer_format(_as_text(values), where)[1], where))


def text_format(values: pd.Series, where: Where) -> str | None:
    """The format :func:`parse_time` infers for ``values`` (a column, or rows sampled from every file of a
    dataset); ``None`` where it infers none (numbers, datetimes, mostly numbers)."""
    if pd.api.types.is_datetime64_any_dtype(values) or len(values) == 0:
        return None
    as_number = pd.to_numeric(values, errors="coerce")
    if as_number.notna().mean() > 0.5:
        return None
    if pd.api.types.infer_dtype(values, skipna=True) in ("date", "datetime", "datetime64"):
        return None
    return infer_format(_as_text(values), where)[0]


def _as_text(values: pd.Series) -> pd.Series:
    """Stripped strings; integral float numbers lose their '.0' (20240130.0 -> '20240130')."""
    if pd.api.types.is_float_dtype(values):
        finite = values.dropna()
        if len(finite) and np.all(np.mod(finite.to_numpy(), 1) == 0):
            return values.map(lambda v: str(int(v)) if pd.notna(v) else None).astype("string")
    return values.astype("string").str.strip()


def _parsed_seconds(parsed: pd.Series, where: Where) -> np.ndarray:
    seconds = datetime_seconds(parsed)
    where.no_missing(np.isnan(seconds))
    return seconds


def _with_format(text: pd.Series, time_format: str, where: Where, inferred: bool = False) -> pd.Series:
    parsed = to_datetime(text, time_format)
    missing = parsed.isna().to_numpy()
    if missing.any():
        hint = (
            f" (it does not match {time_format!r}, the format inferred from rows of every file; set "
            f"data.time_format to the column's format, or data.time_format=mixed to parse each row on its own)"
            if inferred
            else f" (it does not match data.time_format={time_format!r})"
        )
        where.unparsable(int(np.flatnonzero(missing)[0]), hint)
    return parsed


def _epochs(numbers: pd.Series, time_unit: str, where: Where) -> np.ndarray:
    """Numeric epochs in ``time_unit`` -> seconds, refused outside 1970..2100 naming the unit that fits
    (``raw``: any number, as seconds, unchecked)."""
    raw = numbers.to_numpy(dtype=np.float64)
    if time_unit == RAW:
        return raw.copy()
    seconds = raw * UNITS[time_unit]
    bad = ~((seconds >= EARLIEST) & (seconds < LATEST))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        # the first unit that fits gives the most recent plausible date (1.7e12 fits ms, us and ns alike)
        fit = next((u for u, f in UNITS.items() if EARLIEST <= raw[row] * f < LATEST), None)
        hint = (
            f"; read in {fit} it is {pd.Timestamp(raw[row] * UNITS[fit], unit='s')} UTC: set "
            f"data.time_unit={fit} if the column counts {_UNIT_NAMES[fit]}"
            if fit is not None
            else ""
        )
        raise DataError(
            f"{where.file(row)}: timestamp {where.show(row)} {where.at(row)} is not a unix time between "
            f"1970 and 2100 in data.time_unit={time_unit} ({_UNIT_NAMES[time_unit]}){hint} (dates written as "
            f"numbers need data.time_format, e.g. '%Y%m%d'; data.time_unit={RAW} reads any number as seconds, "
            f"unchecked: relative or simulated times, dates before 1970)"
        )
    if time_unit == "s" and _looks_like_yyyymmdd(raw):
        log.warning(
            "%s: column %r looks like dates written as yyyymmdd but is read as unix seconds (1970); "
            "set data.time_format='%%Y%%m%%d' if it holds dates",
            where.path, where.column,
        )  # fmt: skip
    return seconds


def _looks_like_yyyymmdd(raw: np.ndarray) -> bool:
    """Every value an integer 19000101..21001231 with a valid month and day."""
    if not (np.all(np.mod(raw, 1) == 0) and np.all((raw >= 19000101) & (raw <= 21001231))):
        return False
    month, day = (raw // 100) % 100, raw % 100
    return bool(np.all((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)))
