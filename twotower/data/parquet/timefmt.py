"""One time format for a whole Parquet dataset, inferred before the streaming pass (the CSV loader infers it
from the whole column; a dataset is read one record batch at a time, so each batch alone could not settle it:
a file whose days are all 12 or less reads both day- and month-first).

Rows spread over every record batch of every file are sampled (the time column only) and given to the CSV
loader's rule (:func:`twotower.data.timeparse.text_format`). When that sample is ambiguous, every row of the
column is read once more, batch by batch, and the formats still in are narrowed on all of them
(:class:`~twotower.data.timeformat.FormatVote`), so a column the CSV loader reads is read here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from twotower.data.timeformat import AmbiguousFormat, FormatVote, Where
from twotower.data.timeparse import text_format

log = logging.getLogger(__name__)

PER_BATCH = 256  # rows sampled from each record batch, spread over it


def dataset_format(dataset: ds.Dataset, column: str, batch_rows: int = 262_144) -> str | None:
    """The format every batch of ``column`` is parsed with; ``None`` where none is inferred (numbers,
    native timestamps): each batch is then read as the CSV loader reads a column."""
    kind = dataset.schema.field(column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None
    values, rows, paths = [], [], []
    for file, offset, batch in column_batches(dataset, column, batch_rows):
        text, present = _present(batch)
        pick = present[np.linspace(0, len(present) - 1, min(PER_BATCH, len(present))).astype(int)]
        values.append(text.iloc[pick])
        rows.append(offset + pick)
        paths += [Path(file)] * len(pick)
    if not paths:
        return None  # no time at all: every batch names its first missing row
    sample = pd.concat(values, ignore_index=True)
    where = Where(paths[0], column, True, sample, np.concatenate(rows), paths)
    try:
        fmt = text_format(sample, where)
    except AmbiguousFormat as exc:
        log.info("%s: sampled rows read in full as %s; reading every row to settle it", column, exc.formats)
        vote = FormatVote(exc.formats)
        for file, offset, batch in column_batches(dataset, column, batch_rows):
            text, present = _present(batch)
            # a missing row is left to the batch's own parse, which names it
            text = text.iloc[present].reset_index(drop=True)
            vote.feed(text, Where(Path(file), column, True, text, offset + present))
            if len(vote.alive) < 2:
                break  # settled (or refused): the batches' own parse names any row the format misses
        fmt = vote.result()
    if fmt is not None:
        log.info("%s: time format %r, inferred from rows of every file", column, fmt)
    return fmt


def _present(values: pa.Array) -> tuple[pd.Series, np.ndarray]:
    """The values as stripped text, and the positions of those neither null nor empty."""
    text = values.to_pandas().astype("string").str.strip()
    return text, np.flatnonzero(text.notna().to_numpy() & text.ne("").fillna(False).to_numpy())


def column_batches(dataset: ds.Dataset, column: str, batch_rows: int) -> Iterator[tuple[str, int, pa.Array]]:
    """(file, first row in the file, values) of one column, record batch by record batch in file order."""
    for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path):
        scanner = ds.Scanner.from_fragment(
            fragment, schema=dataset.schema, columns=[column], batch_size=batch_rows, use_threads=False
        )
        offset = 0
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield fragment.path, offset, batch.column(0)
                offset += batch.num_rows
