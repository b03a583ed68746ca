"""Train / validation / test splits over an :class:`EncodedLog` (events already sorted per user).

A split names, for every user, the end of the training prefix and the absolute positions of the validation
and test targets (-1 when the user has none). The history of a target is every event of that user before it,
so no target can leak into its own history and each training target only sees earlier events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twotower.data.schema import EncodedLog


@dataclass
class Split:
    protocol: str
    train_end: np.ndarray  # (U,) exclusive end of each user's training prefix (absolute event index)
    val_pos: np.ndarray  # (U,) absolute index of the validation target, -1 if none
    test_pos: np.ndarray  # (U,) absolute index of the test target, -1 if none

    def targets(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, positions) with a target in ``stage`` ('val' or 'test')."""
        pos = self.val_pos if stage == "val" else self.test_pos
        users = np.flatnonzero(pos >= 0)
        return users, pos[users]

    def train_mask(self, data: EncodedLog) -> np.ndarray:
        """(E,) bool: events that are training events."""
        return np.arange(data.n_interactions) < self.train_end[data.users]


def leave_last_out(data: EncodedLog) -> Split:
    """Last event = test target, second-last = validation target, the rest = training history."""
    ends = data.user_offsets[1:]
    lengths = np.diff(data.user_offsets)
    if (lengths < 3).any():
        raise ValueError("leave-last-out needs at least 3 events per user (set data.min_events >= 3)")
    return Split(
        protocol="leave-last-out: per user, last event = test, second-last = validation, rest = train; "
        "events sorted by timestamp, stable on ties",
        train_end=ends - 2,
        val_pos=ends - 2,
        test_pos=ends - 1,
    )


def time_cut(data: EncodedLog, val_quantile: float = 0.9, test_quantile: float = 0.95) -> Split:
    """Global time cut: events before the validation cut train; each user's first event after each cut is a target."""
    if not 0 < val_quantile <= test_quantile < 1:
        raise ValueError("time cut needs 0 < val_quantile <= test_quantile < 1")
    val_cut, test_cut = np.quantile(data.ts, [val_quantile, test_quantile])
    n_users = data.n_users
    train_end = np.empty(n_users, dtype=np.int64)
    val_pos = np.full(n_users, -1, dtype=np.int64)
    test_pos = np.full(n_users, -1, dtype=np.int64)
    for u in range(n_users):
        start, end = int(data.user_offsets[u]), int(data.user_offsets[u + 1])
        ts = data.ts[start:end]
        i_val = start + int(np.searchsorted(ts, val_cut, side="left"))
        i_test = start + int(np.searchsorted(ts, test_cut, side="left"))
        train_end[u] = i_val
        if start < i_val < i_test:  # a target needs at least one earlier event
            val_pos[u] = i_val
        if start < i_test < end:
            test_pos[u] = i_test
    return Split(
        protocol=f"global time cut: train before t={val_cut:.0f} (q{val_quantile}), validation = first event per "
        f"user in [t_val, t_test={test_cut:.0f}), test = first event per user after t_test",
        train_end=train_end,
        val_pos=val_pos,
        test_pos=test_pos,
    )


def make_split(data: EncodedLog, kind: str = "leave_last_out", **kwargs) -> Split:
    if kind == "leave_last_out":
        return leave_last_out(data)
    if kind == "time_cut":
        return time_cut(data, **kwargs)
    raise ValueError(f"unknown split {kind!r}; expected 'leave_last_out' or 'time_cut'")
