"""Timestamps of an interaction log -> float64 unix seconds, with one rule for the whole column.

A column is read one way from its first row to its last: numbers are unix epochs in ``data.time_unit``
(seconds by default) and must fall between 1970 and 2100; date-time strings are ISO 8601 or one format
inferred from the column (never per row, so ``05/01/2024`` and ``20/01/2024`` cannot be read with different
day/month orders); native datetimes (Parquet) are converted exactly. ``data.time_format`` pins a ``strptime``
format (also for numbers such as ``20240130``); ``data.time_format=mixed`` asks for pandas' per-row parsing.
Every refusal names the file, the column, the row and the option that fixes it.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from twotower.data.schema import DataError

log = logging.getLogger(__name__)

UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}  # data.time_unit -> seconds per unit
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
EARLIEST, LATEST = 0.0, 4_102_444_800.0  # 1970-01-01 and 2100-01-01 UTC: a plausible epoch in seconds
_EPOCH = pd.Timestamp(0, tz="UTC")
_YEAR_DAY_MONTH = re.compile(r"%Y\W*%d\W*%m")  # nobody writes year-day-month: a dayfirst guess on ISO dates
_SAMPLES = 16  # values the format is guessed from (spread over the column)


def row_label(path: Path, index: int, header: bool) -> str:
    """Human row reference: the line number in a text file, the 1-based row in Parquet."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        return f"row {index + 1}"
    return f"line {index + 1 + int(header)}"


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
) -> np.ndarray:
    """(n,) float64 unix seconds of a time column; the first bad row is named with the option that fixes it."""
    if time_unit not in UNITS:
        raise DataError(f"data.time_unit={time_unit!r}: expected one of {', '.join(UNITS)}")
    where = _Where(path, column, header, values)
    if pd.api.types.is_datetime64_any_dtype(values):
        seconds = datetime_seconds(values)
        where.no_missing(np.isnan(seconds))
        return seconds
    if time_format is not None:
        return where.finite(_parsed_seconds(_with_format(_as_text(values), time_format, where), where))
    as_number = pd.to_numeric(values, errors="coerce")
    if as_number.notna().all():
        return where.finite(_epochs(as_number, time_unit, where))
    if as_number.notna().mean() > 0.5:  # mostly numbers: the non-numbers are errors, not dates
        where.unparsable(int(np.flatnonzero(as_number.isna().to_numpy())[0]))
    if pd.api.types.infer_dtype(values, skipna=True) in ("date", "datetime", "datetime64"):
        return where.finite(_parsed_seconds(pd.to_datetime(values, errors="coerce", utc=True), where))
    return where.finite(_parsed_seconds(_inferred(_as_text(values), where), where))


class _Where:
    """The file, column and values being parsed, for error messages."""

    def __init__(self, path: Path, column: str, header: bool, values: pd.Series) -> None:
        self.path, self.column, self.header, self.values = path, column, header, values

    def at(self, row: int) -> str:
        return f"in column {self.column!r} at {row_label(self.path, row, self.header)}"

    def show(self, row: int) -> str:
        value = self.values.iloc[row]
        return repr(value.item() if isinstance(value, np.generic) else value)

    def unparsable(self, row: int, hint: str = "") -> None:
        if pd.isna(self.values.iloc[row]):
            raise DataError(f"{self.path}: missing timestamp {self.at(row)}{hint}")
        raise DataError(f"{self.path}: unparsable timestamp {self.show(row)} {self.at(row)}{hint}")

    def no_missing(self, missing: np.ndarray) -> None:
        if missing.any():
            self.unparsable(int(np.flatnonzero(missing)[0]))

    def finite(self, seconds: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(seconds)
        if bad.any():
            raise DataError(f"{self.path}: non-finite timestamp {self.at(int(np.flatnonzero(bad)[0]))}")
        return seconds


def _as_text(values: pd.Series) -> pd.Series:
    """Stripped strings; integral float numbers lose their '.0' (20240130.0 -> '20240130')."""
    if pd.api.types.is_float_dtype(values):
        finite = values.dropna()
        if len(finite) and np.all(np.mod(finite.to_numpy(), 1) == 0):
            return values.map(lambda v: str(int(v)) if pd.notna(v) else None).astype("string")
    return values.astype("string").str.strip()


def _to_datetime(text: pd.Series, fmt: str) -> pd.Series:
    """``text`` parsed with one format (pandas' "ISO8601" and "mixed" included), unparsable rows NaT."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
        except (ValueError, TypeError, OverflowError):
            return pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")


def _parsed_seconds(parsed: pd.Series, where: _Where) -> np.ndarray:
    seconds = datetime_seconds(parsed)
    where.no_missing(np.isnan(seconds))
    return seconds


def _with_format(text: pd.Series, time_format: str, where: _Where) -> pd.Series:
    parsed = _to_datetime(text, time_format)
    missing = parsed.isna().to_numpy()
    if missing.any():
        where.unparsable(
            int(np.flatnonzero(missing)[0]), f" (it does not match data.time_format={time_format!r})"
        )
    return parsed


def _epochs(numbers: pd.Series, time_unit: str, where: _Where) -> np.ndarray:
    """Numeric epochs in ``time_unit`` -> seconds, refused outside 1970..2100 naming the unit that fits."""
    raw = numbers.to_numpy(dtype=np.float64)
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
            f"{where.path}: timestamp {where.show(row)} {where.at(row)} is not a unix time between "
            f"1970 and 2100 in data.time_unit={time_unit} ({_UNIT_NAMES[time_unit]}){hint} (dates written as "
            f"numbers need data.time_format, e.g. '%Y%m%d')"
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


def _candidate_formats(text: pd.Series) -> list[str]:
    """Formats guessed (month-first and day-first) from values spread over the column, in order."""
    present = text.dropna()
    picks = present.iloc[np.linspace(0, len(present) - 1, min(_SAMPLES, len(present))).astype(int)].unique()
    formats: list[str] = []
    for value in picks:
        for dayfirst in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fmt = guess_datetime_format(str(value), dayfirst=dayfirst)
            if fmt and fmt not in formats and not _YEAR_DAY_MONTH.search(fmt):
                formats.append(fmt)
    return formats


def _inferred(text: pd.Series, where: _Where) -> pd.Series:
    """ISO 8601, else the one format inferred from the column that reads every row; refuse when two formats
    read every row differently (``05/01/2024``: month- or day-first) or when none reads them all."""
    empty = (text.isna() | text.eq("")).to_numpy()
    if empty.any():
        where.unparsable(int(np.flatnonzero(empty)[0]))
    iso = _to_datetime(text, "ISO8601")
    if iso.notna().all():
        return iso
    tried = {fmt: _to_datetime(text, fmt) for fmt in _candidate_formats(text)}
    full = [(fmt, parsed) for fmt, parsed in tried.items() if parsed.notna().all()]
    if full:
        (fmt, parsed), *others = full
        for other_fmt, other in others:
            differ = (parsed != other).to_numpy()
            if differ.any():
                row = int(np.flatnonzero(differ)[0])
                raise DataError(
                    f"{where.path}: ambiguous timestamp {where.show(row)} {where.at(row)}: every row reads "
                    f"as {fmt!r} ({parsed.iloc[row]:%Y-%m-%d}) and as {other_fmt!r} ({other.iloc[row]:%Y-%m-%d}); "
                    f"set data.time_format to the column's format, data.time_format='{fmt}' or '{other_fmt}'"
                )
        return parsed
    best_fmt, best = max([("ISO 8601", iso), *tried.items()], key=lambda kv: int(kv[1].notna().sum()))
    where.unparsable(
        int(np.flatnonzero(best.isna().to_numpy())[0]),
        f": the column is read with one format for every row ({best_fmt!r} reads the most rows); set "
        f"data.time_format to its strptime format, or data.time_format=mixed to parse each row on its own",
    )
    raise AssertionError("unreachable")
