"""Seeded reductions of a loaded log, for benchmarks of regimes a data set does not have by itself.

:func:`reduce_log` keeps, per user, one short contiguous stretch of the time-ordered events and floors the
timestamps (a dense log made sparse and tie-heavy, as shop logs are). :func:`reduced` wraps any loader so that
a data config can ask for it:

.. code-block:: yaml

    loader:
      _target_: twotower.data.reduce.reduced
      loader: {_target_: twotower.data.movielens.load_ml100k, _partial_: true}
      min_events: 3
      max_events: 6
      time_granularity_s: 86400
      seed: 0

The data config's other keys (``path``, ``name`` ...) reach the wrapped loader unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from twotower.data.schema import TIME, USER, RawLog

log = logging.getLogger(__name__)


def stretch_rows(
    users: np.ndarray, ts: np.ndarray, min_events: int, max_events: int, seed: int = 0
) -> np.ndarray:
    """(K,) sorted row indices: per user a contiguous run of the events in time order (file order on ties),
    of a length drawn evenly from ``min_events..max_events`` (all events when the user has fewer), at an even
    random start. Reproducible from ``seed``."""
    if not 1 <= min_events <= max_events:
        raise ValueError(f"need 1 <= min_events <= max_events, got {min_events}, {max_events}")
    rng = np.random.default_rng(seed)
    codes = np.unique(users, return_inverse=True)[1].reshape(-1)  # (E,) user index in sorted id order
    order = np.lexsort((np.arange(len(ts)), ts, codes))  # (E,) by user, time, file order
    counts = np.bincount(codes)  # (U,)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (U,) first position of each user in ``order``
    wanted = rng.integers(min_events, max_events + 1, size=len(counts))  # (U,)
    lengths = np.minimum(wanted, counts)  # (U,)
    offsets = np.floor(rng.random(len(counts)) * (counts - lengths + 1)).astype(np.int64)  # (U,)
    first = starts + offsets  # (U,)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (K,)
    return np.sort(order[np.repeat(first, lengths) + within])


def floor_time(ts: np.ndarray, granularity_s: float) -> np.ndarray:
    """Timestamps floored to multiples of ``granularity_s`` seconds (86400: the day, in UTC)."""
    if granularity_s <= 0:
        raise ValueError(f"time granularity must be positive, got {granularity_s}")
    return np.floor(np.asarray(ts, dtype=np.float64) / granularity_s) * granularity_s


def last_rows(users: np.ndarray, ts: np.ndarray, n: int = 1) -> np.ndarray:
    """(E,) bool: each user's last ``n`` events in time order (file order on ties), as the split orders them."""
    codes = np.unique(users, return_inverse=True)[1].reshape(-1)  # (E,)
    order = np.lexsort((np.arange(len(ts)), ts, codes))  # (E,) by user, time, file order
    ends = np.cumsum(np.bincount(codes))  # (U,) one past each user's last position in ``order``
    rank_from_end = np.repeat(ends, np.bincount(codes)) - np.arange(len(ts))  # (E,) 1 = last, by position
    last = np.zeros(len(ts), dtype=bool)
    last[order[rank_from_end <= n]] = True
    return last


def reduce_log(
    raw: RawLog,
    min_events: int = 3,
    max_events: int = 6,
    time_granularity_s: float | None = 86400.0,
    seed: int = 0,
    drop_last: int = 0,
) -> RawLog:
    """A copy of ``raw`` with one stretch per user (:func:`stretch_rows`) and floored timestamps; the kept rows
    stay in file order, so events that now share a timestamp keep the order of the file, not of the clock.

    ``drop_last=1`` then removes each user's last event (the test target): the split's test target becomes
    the real validation target, a nested split that shows on validation data alone how a model fares when its
    history holds an event it never trained on, as the real test history holds the validation event."""
    events = raw.events
    rows = stretch_rows(events[USER].to_numpy(), events[TIME].to_numpy(), min_events, max_events, seed)
    kept = events.iloc[rows].reset_index(drop=True)
    if time_granularity_s and raw.has_time:
        kept[TIME] = floor_time(kept[TIME].to_numpy(), time_granularity_s)
    if drop_last:
        kept = kept.loc[~last_rows(kept[USER].to_numpy(), kept[TIME].to_numpy(), drop_last)]
        kept = kept.reset_index(drop=True)
    report = raw.report
    report.notes.append(
        f"reduced: one stretch of {min_events}-{max_events} events per user (seed {seed}), "
        f"time floored to {time_granularity_s} s, last {drop_last} dropped; {len(kept)} of {len(events)} rows kept"
    )
    log.info("%s: reduced to %d of %d rows", raw.name, len(kept), len(events))
    return RawLog(events=kept, items=raw.items, name=raw.name, report=report, has_time=raw.has_time)


def reduced(
    loader: Callable[..., RawLog],
    min_events: int = 3,
    max_events: int = 6,
    time_granularity_s: float | None = 86400.0,
    seed: int = 0,
    drop_last: int = 0,
    **loader_args,
) -> RawLog:
    """Call ``loader(**loader_args)`` and reduce what it returns with :func:`reduce_log`."""
    return reduce_log(loader(**loader_args), min_events, max_events, time_granularity_s, seed, drop_last)
