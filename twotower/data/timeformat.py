"""Which one format reads a text time column (:func:`infer_format`, :class:`FormatVote`), and where a bad row
is (:class:`Where`): the rule :mod:`twotower.data.timeparse` applies to a CSV column and to a Parquet dataset
read batch by batch (the format inferred once from rows of every file)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from twotower.data.schema import DataError

_YEAR_DAY_MONTH = re.compile(r"%Y\W*%d\W*%m")  # nobody writes year-day-month: a dayfirst guess on ISO dates
_SAMPLES = 16  # values the format is guessed from (spread over the column)


def row_label(path: Path, index: int, header: bool) -> str:
    """Human row reference: the line number in a text file, the 1-based row in Parquet."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        return f"row {index + 1}"
    return f"line {index + 1 + int(header)}"


class Where:
    """The file, column and values being parsed, for error messages. ``rows`` (n,): each value's row in its
    file (default: its position); ``paths`` (n,): each value's file (a sample over a dataset's files)."""

    def __init__(
        self,
        path: Path,
        column: str,
        header: bool,
        values: pd.Series,
        rows: np.ndarray | None = None,
        paths: list[Path] | None = None,
    ) -> None:
        self.path, self.column, self.header, self.values = path, column, header, values
        self.rows, self.paths = rows, paths

    def file(self, row: int) -> Path:
        return self.path if self.paths is None else self.paths[row]

    def at(self, row: int) -> str:
        index = row if self.rows is None else int(self.rows[row])
        return f"in column {self.column!r} at {row_label(self.file(row), index, self.header)}"

    def show(self, row: int) -> str:
        value = self.values.iloc[row]
        return repr(value.item() if isinstance(value, np.generic) else value)

    def unparsable(self, row: int, hint: str = "") -> None:
        raise DataError(self.unparsable_message(row, hint))

    def unparsable_message(self, row: int, hint: str = "") -> str:
        if pd.isna(self.values.iloc[row]):
            return f"{self.file(row)}: missing timestamp {self.at(row)}{hint}"
        return f"{self.file(row)}: unparsable timestamp {self.show(row)} {self.at(row)}{hint}"

    def no_missing(self, missing: np.ndarray) -> None:
        if missing.any():
            self.unparsable(int(np.flatnonzero(missing)[0]))

    def finite(self, seconds: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(seconds)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{self.file(row)}: non-finite timestamp {self.at(row)}")
        return seconds


def to_datetime(text: pd.Series, fmt: str) -> pd.Series:
    """``text`` parsed with one format (pandas' "ISO8601" and "mixed" included), unparsable rows NaT."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
        except (ValueError, TypeError, OverflowError):
            return pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")


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


class AmbiguousFormat(DataError):
    """Two formats read every row given, to different dates; ``formats``: those that read every row."""

    def __init__(self, message: str, formats: list[str]) -> None:
        super().__init__(message)
        self.formats = formats


class FormatVote:
    """Which of ``formats`` reads every row of a column fed to it chunk by chunk (one file or record batch at
    a time): a format that fails a row is out; two that read every row to different dates are ambiguous."""

    def __init__(self, formats: list[str]) -> None:
        self.alive = list(formats)
        self.tried: dict[str, pd.Series] = {}  # the last chunk parsed by every format still in
        self.best: tuple[int, str, str] | None = None  # (rows read, format, first failure), most read
        self.differ: dict[tuple[str, str], str] = {}  # first ambiguous row of a pair still in

    def feed(self, text: pd.Series, where: Where) -> None:
        self.tried = {fmt: to_datetime(text, fmt) for fmt in self.alive}
        for fmt, parsed in self.tried.items():
            missing = parsed.isna().to_numpy()
            if missing.any():
                self.alive.remove(fmt)
                read = int((~missing).sum())
                if self.best is None or read > self.best[0]:
                    self.best = (
                        read,
                        fmt,
                        where.unparsable_message(int(np.flatnonzero(missing)[0]), _one(fmt)),
                    )
        for i, fmt in enumerate(self.alive):
            for other_fmt in self.alive[i + 1 :]:
                if (fmt, other_fmt) in self.differ:
                    continue
                parsed, other = self.tried[fmt], self.tried[other_fmt]
                differ = (parsed != other).to_numpy()
                if differ.any():
                    row = int(np.flatnonzero(differ)[0])
                    self.differ[(fmt, other_fmt)] = (
                        f"{where.file(row)}: ambiguous timestamp {where.show(row)} {where.at(row)}: every row "
                        f"reads as {fmt!r} ({parsed.iloc[row]:%Y-%m-%d}) and as {other_fmt!r} "
                        f"({other.iloc[row]:%Y-%m-%d}); set data.time_format to the column's format, "
                        f"data.time_format='{fmt}' or '{other_fmt}'"
                    )

    def result(self) -> str:
        """The format that reads every row; raises naming a row when none does or two read them differently."""
        if not self.alive:
            raise DataError(self.best[2] if self.best else "no format to try")
        for i, fmt in enumerate(self.alive):
            for other_fmt in self.alive[i + 1 :]:
                if (fmt, other_fmt) in self.differ:
                    raise AmbiguousFormat(self.differ[(fmt, other_fmt)], list(self.alive))
        return self.alive[0]


def infer_format(text: pd.Series, where: Where) -> tuple[str, pd.Series]:
    """ISO 8601, else the one format inferred from the column that reads every row, with the parsed rows;
    refuse when two formats read every row differently (``05/01/2024``: month- or day-first) or when none
    reads them all. The one rule for a CSV column and for a Parquet dataset (rows sampled from every file)."""
    empty = (text.isna() | text.eq("")).to_numpy()
    if empty.any():
        where.unparsable(int(np.flatnonzero(empty)[0]))
    iso = to_datetime(text, "ISO8601")
    if iso.notna().all():
        return "ISO8601", iso
    vote = FormatVote(_candidate_formats(text))
    vote.feed(text, where)
    if vote.alive or (vote.best is not None and vote.best[0] > int(iso.notna().sum())):
        fmt = vote.result()
        return fmt, vote.tried[fmt]
    where.unparsable(int(np.flatnonzero(iso.isna().to_numpy())[0]), _one("ISO 8601"))
    raise AssertionError("unreachable")


def _one(fmt: str) -> str:
    return (
        f": the column is read with one format for every row ({fmt!r} reads the most rows); set "
        f"data.time_format to its strptime format, or data.time_format=mixed to parse each row on its own"
    )
