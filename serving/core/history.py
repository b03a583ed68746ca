"""A user's history as the user tower reads it, and the one rule for time gaps (shared with training).

No torch. Rows are 0-based catalog rows; the ONNX graph reads them 1-based (0 = padding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

UNKNOWN = -1.0  # dwell or gap seconds that are not known
PADDING = {"items": (0, np.int64), "events": (0, np.int64), "dwell": (UNKNOWN, np.float32),
           "gaps": (UNKNOWN, np.float32), "queries": (0, np.int64),
           "context": (0, np.int64)}  # fmt: skip  # ONNX input -> (pad value, dtype)
_WEEK_SHIFT_H = 3 * 24  # 1970-01-01 was a Thursday: hours from Monday 00:00 to the epoch


_DEFAULT_LEN = 1024  # histories up to this long share read-only default arrays (no allocation per request)
_NO_EVENTS = np.zeros(_DEFAULT_LEN, dtype=np.int64)
_UNKNOWN_SECONDS = np.full(_DEFAULT_LEN, UNKNOWN, dtype=np.float32)
_NO_EVENTS.flags.writeable = _UNKNOWN_SECONDS.flags.writeable = False


def _filled(constant: np.ndarray, n: int) -> np.ndarray:
    """(n,) of ``constant``'s value: a read-only view of it when it is long enough, else a new array."""
    return constant[:n] if n <= len(constant) else np.full(n, constant[0], constant.dtype)


def sequence_starts(keys: np.ndarray) -> np.ndarray:
    """(E,) bool: the event opens a new run of equal keys (a user's first event in a user-grouped table)."""
    keys = np.asarray(keys)
    return np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, dtype=bool)


def hour_of_week(ts: np.ndarray) -> np.ndarray:
    """(E,) int64 hour of the week in UTC, Monday 00:00 = 0 .. Sunday 23:00 = 167; -1 where the time is unknown.
    Training's ``hour_of_week`` context and serving's both come from here."""
    ts = np.asarray(ts, dtype=np.float64)
    known = np.isfinite(ts)
    hours = np.floor(np.where(known, ts, 0.0) / 3600.0).astype(np.int64)
    return np.where(known, (hours + _WEEK_SHIFT_H) % 168, -1)


def time_gaps(ts: np.ndarray, new_sequence: np.ndarray | None = None) -> np.ndarray:
    """(E,) float32 seconds since the previous event of the same sequence.

    -1 for a first event (``new_sequence[i]`` true, or i = 0) or when either time is unknown (NaN);
    out-of-order times give 0, never a negative gap. Training and serving both call this.
    """
    gaps = np.full(len(ts), UNKNOWN, dtype=np.float32)
    if len(ts) > 1:
        diff = np.diff(np.asarray(ts, dtype=np.float64))  # (E - 1,)
        known = np.isfinite(diff)
        if new_sequence is not None:
            known &= ~np.asarray(new_sequence[1:], dtype=bool)
        gaps[1:] = np.where(known, np.maximum(diff, 0.0), UNKNOWN)
    return gaps


@dataclass(frozen=True)
class History:
    """One user's events, oldest first, already mapped to model inputs.

    ``gaps`` are computed over the whole history before any truncation, as in training, so the oldest event
    of a truncated window keeps its real gap.
    """

    rows: np.ndarray  # (E,) int64 catalog rows
    events: np.ndarray  # (E,) int64 event index
    dwell: np.ndarray  # (E,) float32 seconds, -1 unknown
    gaps: np.ndarray  # (E,) float32 seconds since the previous event, -1 unknown
    queries: np.ndarray | None = (
        None  # (E, T) int64 hashed query tokens each event's position reads (0 = pad)
    )
    context: np.ndarray | None = None  # (E, K) int64 context indices (0 = unknown)

    @classmethod
    def build(
        cls,
        rows: np.ndarray,
        events: np.ndarray | None = None,
        dwell: np.ndarray | None = None,
        ts: np.ndarray | None = None,
        gaps: np.ndarray | None = None,
    ) -> History:
        """From arrays of one length; missing events are index 0, missing dwell/time are unknown."""
        n = len(rows)
        events = _filled(_NO_EVENTS, n) if events is None else np.asarray(events, np.int64)
        if dwell is None:
            dwell = _filled(_UNKNOWN_SECONDS, n)
        else:  # negative, NaN or infinite seconds are unknown
            dwell = np.asarray(dwell, np.float32)
            dwell = np.where(np.isfinite(dwell) & (dwell >= 0), dwell, np.float32(UNKNOWN)).astype(np.float32)
        if gaps is None and ts is not None:
            gaps = time_gaps(ts)
        elif gaps is None:
            gaps = _filled(_UNKNOWN_SECONDS, n)
        return cls(np.asarray(rows, np.int64), events, dwell, np.asarray(gaps, np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def feeds(self, max_len: int) -> dict[str, np.ndarray]:
        """ONNX inputs (1, L) for the last ``max_len`` events (``queries`` (1, L, T), ``context`` (1, L, K) when
        the history carries them)."""
        start = max(0, len(self.rows) - max_len)
        out = {
            "items": (self.rows[start:] + 1)[None, :],
            "events": self.events[None, start:],
            "dwell": self.dwell[None, start:],
            "gaps": self.gaps[None, start:],
        }
        if self.queries is not None:
            out["queries"] = self.queries[None, start:]
        if self.context is not None:
            out["context"] = self.context[None, start:]
        return out

    def concat(self, newer: History, drop: int = 0) -> History:
        """This history without its ``drop`` oldest events, followed by ``newer``; a signal one side lacks reads
        as neutral (no query, unknown context)."""
        arrays = [np.concatenate([a[drop:], b]) for a, b in zip(
            (self.rows, self.events, self.dwell, self.gaps), (newer.rows, newer.events, newer.dwell, newer.gaps),
            strict=True)]  # fmt: skip
        extra = {}
        for name in ("queries", "context"):
            old, new = getattr(self, name), getattr(newer, name)
            if old is None and new is None:
                continue
            width = (old if old is not None else new).shape[1]
            old = np.zeros((len(self), width), np.int64) if old is None else old
            new = np.zeros((len(newer), width), np.int64) if new is None else new
            extra[name] = np.concatenate([old[drop:], new])
        return History(*arrays, **extra)

    def with_signals(self, queries: np.ndarray | None = None, context: np.ndarray | None = None) -> History:
        """The same events with per-event query tokens (E, T) and/or context (E, K) set."""
        return replace(self, queries=self.queries if queries is None else queries,
                       context=self.context if context is None else context)  # fmt: skip


def padded_feeds(histories: Sequence[History], max_len: int) -> dict[str, np.ndarray]:
    """(B, L) right-padded ONNX inputs for a batch of histories (L = longest kept history, at least 1)."""
    rows = [h.feeds(max_len) for h in histories]
    width = max([1, *(r["items"].shape[1] for r in rows)])
    out = {}
    for name, (pad, dtype) in PADDING.items():
        inner = {r[name].shape[2:] for r in rows if name in r}  # () per-event scalars, (T,) / (K,) signals
        if name in ("items", "events", "dwell", "gaps") or inner:
            out[name] = np.full((len(rows), width, *(max(inner) if inner else ())), pad, dtype)
    for b, row in enumerate(rows):
        for name, values in row.items():
            out[name][b, : values.shape[1]] = values[0]
    return out


def histories_from_frame(
    frame: pd.DataFrame,
    row_of: Mapping[str, int],
    event_of: Mapping[str, int],
    signals: Mapping[str, np.ndarray] | None = None,
) -> dict[str, History]:
    """A stored-histories table (``user_id, item_id, event, dwell_s, ts[, gap_s]``, each user's events together,
    oldest first, as ``histories.parquet``) -> one History per user. Items missing from ``row_of`` are left
    out; gaps come from ``gap_s`` (computed over the whole log at training time) when the table has it.
    ``signals``: per-row ``queries`` (E, T) / ``context`` (E, K) arrays to carry along."""
    users = frame["user_id"].astype(str).to_numpy()
    gaps = frame["gap_s"].to_numpy(np.float32) if "gap_s" in frame else time_gaps(frame["ts"].to_numpy(),
                                                                                   sequence_starts(users))  # fmt: skip
    rows = np.fromiter((row_of.get(str(i), -1) for i in frame["item_id"]), np.int64, len(frame))
    events = np.fromiter((event_of.get(str(e), 0) for e in frame["event"]), np.int64, len(frame))
    dwell = frame["dwell_s"].to_numpy(np.float32)
    bounds = np.r_[np.flatnonzero(sequence_starts(users)), len(users)]
    out: dict[str, History] = {}
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        known = begin + np.flatnonzero(rows[begin:end] >= 0)
        extra = {name: values[known] for name, values in (signals or {}).items()}
        out[users[begin]] = History(rows[known], events[known], dwell[known], gaps[known], **extra)
    return out
