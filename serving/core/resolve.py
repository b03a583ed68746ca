"""External item ids -> model inputs: how a raw history (ids, events, dwell, times) maps onto a catalog.

No torch. Ids in the catalog become rows; ids added live are excluded from answers but not encoded; other ids are
reported as unknown. One rule for the service, batch scoring and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from itertools import repeat
from operator import itemgetter

import numpy as np

from serving.core.history import History, time_gaps
from serving.core.results import ResolvedHistory
from serving.core.signals import Signals


def resolve_history(
    items: Sequence,
    events: Sequence[str] | None = None,
    dwell: Sequence[float | None] | None = None,
    ts: Sequence[float] | None = None,
    previous_ts: float | None = None,
    *,
    row_of: Mapping[str, int],
    event_of: Mapping[str, int],
    live_ids: Container[str] = (),
    has_time: bool = True,
    signals: Mapping[str, np.ndarray] | None = None,
) -> ResolvedHistory:
    """Ids (oldest first) -> model inputs. ``row_of``: catalog id -> row; ``event_of``: event name -> index
    (unknown events map to 0, the 'other' bucket); ``live_ids``: ids added since the bundle; ``has_time``: the
    model reads time gaps. Ids are looked up as given, then as text (a JSON number for a digit id).

    ``previous_ts``: time of the event just before these (for the first gap when extending a history).
    ``signals``: per-item ``queries`` (n, T) / ``context`` (n, K) arrays, kept for the items kept."""
    n = len(items)
    if signals:
        resolved = resolve_history(items, events, dwell, ts, previous_ts, row_of=row_of, event_of=event_of,
                                   live_ids=live_ids, has_time=has_time)  # fmt: skip
        kept = _kept(items, row_of)
        resolved.history = resolved.history.with_signals(**{k: v[kept] for k, v in signals.items()})
        return resolved
    if n and events is None and dwell is None and ts is None:  # ids alone (a one-off history): short path
        try:  # one C call for all lookups; a miss raises (KeyError; TypeError if unhashable): full path below
            found = itemgetter(*items)(row_of)
        except (KeyError, TypeError):
            pass
        else:  # every id is a catalog row: no mask, no second pass (the fast path)
            rows = np.fromiter(found if n > 1 else (found,), np.int64, n)
            return ResolvedHistory(History.build(rows), n_events=n)
    for name, values in (("events", events), ("dwell", dwell), ("ts", ts)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} values for {n} items")
    rows = np.fromiter(map(row_of.get, items, repeat(-1)), np.int64, n)  # C-speed loop; ids are str keys
    known = rows >= 0
    if not known.all():  # ids given as numbers: looked up again as text
        for j in np.flatnonzero(~known).tolist():
            rows[j] = row_of.get(str(items[j]), -1)
        known = rows >= 0
    ev = np.fromiter(map(event_of.get, map(str, events), repeat(0)), np.int64, n) if events else None
    dw = None if dwell is None else np.array([-1.0 if d is None else d for d in dwell], np.float32)
    times = np.asarray(ts, dtype=np.float64) if ts is not None and has_time else None
    gaps = None  # over the whole timeline, unknown items too
    if times is not None:
        gaps = time_gaps(np.r_[previous_ts, times])[1:] if previous_ts is not None else time_gaps(times)
    history = History.build(rows, ev, dw, gaps=gaps)
    last_ts = float(ts[-1]) if ts is not None and n else float("nan")
    if known.all():
        return ResolvedHistory(history, n_events=n, last_ts=last_ts)
    history = History(*(a[known] for a in (history.rows, history.events, history.dwell, history.gaps)))
    others = [str(i) for i, k in zip(items, known, strict=True) if not k]
    unknown = [i for i in others if i not in live_ids]
    return ResolvedHistory(history, unknown, {i for i in others if i in live_ids}, n, last_ts)


def _kept(items: Sequence, row_of: Mapping[str, int]) -> np.ndarray:
    """(n,) bool: the ids :func:`resolve_history` keeps (catalog rows, as given or as text)."""
    return np.array([(i in row_of if isinstance(i, str) else False) or str(i) in row_of for i in items], bool)


def resolve_entries(
    entries: Sequence,
    events: Sequence[str] | None = None,
    dwell: Sequence[float | None] | None = None,
    ts: Sequence[float] | None = None,
    previous_ts: float | None = None,
    *,
    signals: Signals,
    row_of: Mapping[str, int],
    event_of: Mapping[str, int],
    live_ids: Container[str] = (),
    has_time: bool = True,
) -> ResolvedHistory:
    """:func:`resolve_history` for a history that may hold searches (``{"query": text}`` entries) and a model
    that may read signals: each search's tokens go to the last known item before it, each event gets its
    hour-of-week context from ``ts``. ``events``, ``dwell`` and ``ts`` have a value per entry, searches
    included. Without signals or searches this is :func:`resolve_history` itself."""
    if not signals.inputs and all(type(e) is str or not isinstance(e, Mapping) for e in entries):
        return resolve_history(entries, events, dwell, ts, previous_ts, row_of=row_of, event_of=event_of,
                               live_ids=live_ids, has_time=has_time)  # fmt: skip
    positions, ids, texts, _ = signals.split_history(entries, lambda i: i in row_of or str(i) in row_of)

    def at_items(values: Sequence | None) -> list | None:
        return None if values is None else [values[p] for p in positions]

    times = at_items(ts)
    extra = {
        "queries": signals.query_tokens(texts, len(ids)),
        "context": signals.context_rows(len(ids), None, None if times is None else np.asarray(times)),
    }
    return resolve_history(ids, at_items(events), at_items(dwell), times, previous_ts, row_of=row_of,
                           event_of=event_of, live_ids=live_ids, has_time=has_time,
                           signals={k: v for k, v in extra.items() if v is not None})  # fmt: skip
