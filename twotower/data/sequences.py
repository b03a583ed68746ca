"""Sequence views of a split log for training and evaluation (numpy in, padded torch batches out).

Training: each user's training prefix is cut into windows of ``max_len + 1`` events from the most recent
backwards; within a window, position t is trained to predict event t + 1 from events up to t only.
Evaluation: one query per user with a target; the model reads the last ``max_len`` events before the target
and every earlier item of the user is excluded from the ranking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from serving.core.history import sequence_starts, time_gaps
from twotower.config_check import ConfigError
from twotower.data.layout import target_layout
from twotower.data.schema import EncodedLog
from twotower.data.splits import Split


def event_gaps(data: EncodedLog) -> np.ndarray:
    """(E,) seconds since the user's previous event; -1 for a first event or when the log has no time."""
    if not data.has_time:
        return np.full(data.n_interactions, -1.0, dtype=np.float32)
    return time_gaps(data.ts, sequence_starts(data.users))  # the rule serving uses


def event_weight_table(
    event_weights: Mapping[str, float] | None, event_names: list[str]
) -> np.ndarray | None:
    """(n_events,) target weight per event index from ``datamodule.event_weights`` (unnamed types weigh 1);
    None without weights. A name that is no event type of the log, or a weight that is not a finite number
    >= 0, is refused, naming the key and the known event names."""
    if not event_weights:
        return None
    unknown = sorted(str(name) for name in event_weights if name not in event_names)
    if unknown:
        raise ConfigError(
            f"datamodule.event_weights: {unknown} name no event type of the log; its event types are {event_names}"
        )
    bad = {}
    for name, weight in event_weights.items():
        try:
            ok = math.isfinite(float(weight)) and float(weight) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok or isinstance(weight, bool):
            bad[name] = weight
    if bad:
        raise ConfigError(f"datamodule.event_weights: {bad}: each weight must be a finite number >= 0")
    return np.array([float(event_weights.get(name, 1.0)) for name in event_names], dtype=np.float32)


@dataclass
class SequenceArrays:
    """Flat per-event arrays the datasets slice from."""

    items: np.ndarray
    events: np.ndarray
    dwell: np.ndarray
    gaps: np.ndarray
    weights: np.ndarray  # (E,) training weight of an event when it is a target
    users: np.ndarray | None = None  # (E,) user of each event (to look up user features)
    queries: np.ndarray | None = None  # (E, T) hashed query tokens each position reads
    context: np.ndarray | None = None  # (E, K) context indices
    user_features: np.ndarray | None = None  # (U, F) static feature indices

    @classmethod
    def from_log(cls, data: EncodedLog, event_weights: dict[str, float] | None = None) -> SequenceArrays:
        table = event_weight_table(event_weights, data.event_names)
        weights = table[data.events] if table is not None else np.ones(data.n_interactions, dtype=np.float32)
        return cls(data.items, data.events, data.dwell, event_gaps(data), weights, data.users,
                   data.queries, data.context, data.user_features)  # fmt: skip

    def signals(self, windows: list, users: list[int]) -> dict[str, torch.Tensor]:
        """The optional inputs of a batch of windows (index arrays or slices into the flat arrays) of ``users``:
        ``queries`` (B, L, T), ``context`` (B, L, K), ``user_features`` (B, F); only those the log has."""
        out = {}
        for name in ("queries", "context"):
            table = getattr(self, name)
            if table is not None:
                out[name] = torch.from_numpy(pad_rows([table[s] for s in windows], np.int64))
        if self.user_features is not None:
            out["user_features"] = torch.from_numpy(self.user_features[np.asarray(users, np.int64)])
        return out


def pad_rows(rows: list[np.ndarray], dtype, fill=0) -> np.ndarray:
    """Right-pad arrays (1-D, or (n, T) per-event rows) into (B, max_len[, T])."""
    width = max(1, max(len(r) for r in rows))
    out = np.full((len(rows), width, *rows[0].shape[1:]), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class TrainWindows(Dataset):
    """Windows over training prefixes; an item is (start, end) absolute event indices."""

    start_targets = 1  # a shard's windows (no user features) keep the one-target rule
    train_range: np.ndarray | None = None

    def __init__(
        self,
        data: EncodedLog,
        split: Split,
        arrays: SequenceArrays,
        max_len: int,
        shuffle_ties: bool = False,
        seed: int = 0,
        start_targets: int = 1,
    ) -> None:
        if start_targets < 1:
            raise ValueError(f"start_targets must be >= 1, got {start_targets}")
        self.arrays = arrays
        self.start_targets = start_targets
        # Events with the same timestamp have no true order (file order breaks the tie); reshuffling them
        # in every batch is an augmentation that stops the model from learning that arbitrary order.
        self.ts = data.ts if shuffle_ties and data.has_time else None
        self.rng = np.random.default_rng(seed)
        windows = []
        starts = data.user_offsets[:-1]
        # each user's training events [first, train_end): where a start token's extra targets are drawn
        self.train_range = np.stack([starts, split.train_end], 1).astype(np.int64)  # (U, 2)
        for u in range(data.n_users):
            first, end = int(starts[u]), int(split.train_end[u])
            while end - first >= 2:  # at least one (history, target) pair
                begin = max(first, end - max_len - 1)
                windows.append((begin, end))
                end = begin + 1  # the next window's last event is this window's first input
        self.windows = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
        self.n_targets = int((self.windows[:, 1] - self.windows[:, 0] - 1).sum()) if len(self.windows) else 0

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def lengths(self) -> np.ndarray:
        """(W,) number of targets in each window."""
        return self.windows[:, 1] - self.windows[:, 0] - 1

    def __getitem__(self, index: int) -> tuple[int, int]:
        begin, end = self.windows[index]
        return int(begin), int(end)

    def target_counts(self, n_items: int) -> np.ndarray:
        """(N + 1,) how often each item is a training target (for logQ)."""
        counts = np.zeros(n_items + 1, dtype=np.int64)
        for begin, end in self.windows:
            np.add.at(counts, self.arrays.items[begin + 1 : end], 1)
        return counts

    def _window_order(self, begin: int, end: int) -> np.ndarray:
        """Absolute event indices of a window: in time order, ties in a random order when shuffling."""
        index = np.arange(begin, end)
        if self.ts is None:
            return index
        return index[np.lexsort((self.rng.random(end - begin), self.ts[begin:end]))]

    def collate(self, batch: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        a = self.arrays
        orders = [self._window_order(b, e) for b, e in batch]
        inputs, outputs = [o[:-1] for o in orders], [o[1:] for o in orders]
        # gaps stay positional: inside a tie group every gap is 0 whatever the order
        gaps = [a.gaps[b : e - 1] for b, e in batch]
        collated = {
            "items": torch.from_numpy(pad_rows([a.items[s] for s in inputs], np.int64)),  # (B, L)
            "events": torch.from_numpy(pad_rows([a.events[s] for s in inputs], np.int64)),
            "dwell": torch.from_numpy(pad_rows([a.dwell[s] for s in inputs], np.float32, -1.0)),
            "gaps": torch.from_numpy(pad_rows(gaps, np.float32, -1.0)),
            "targets": torch.from_numpy(pad_rows([a.items[s] for s in outputs], np.int64)),  # (B, L), 0 = pad
            "weights": torch.from_numpy(pad_rows([a.weights[s] for s in outputs], np.float32, 0.0)),
            **self.signals_of(inputs),
        }
        return collated | target_layout(collated)  # located here: in the loader's workers

    def signals_of(self, inputs: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Optional inputs of the windows; with user features also ``start_targets`` / ``start_weights``
        (B, S): what the start token (the features alone) is trained to predict. Column 0 is the window's first
        item; the other ``S - 1`` are drawn uniformly from the user's training events, so that the features
        learn the user's whole taste, not only where a window happens to begin (a window's first item is one
        target per window: a few thousand on a small log, too few for a profile to beat popularity)."""
        a = self.arrays
        if a.users is None:
            return {}
        firsts = np.array([s[0] for s in inputs], dtype=np.int64)  # (B,)
        users = a.users[firsts]  # (B,)
        out = a.signals(inputs, users.tolist())
        if a.user_features is not None:
            picks = firsts[:, None]  # (B, 1)
            if self.start_targets > 1 and self.train_range is not None:
                low, high = self.train_range[users, 0], self.train_range[users, 1]  # (B,), (B,)
                draws = self.rng.random((len(users), self.start_targets - 1))  # (B, S - 1)
                extra = low[:, None] + (draws * (high - low)[:, None]).astype(np.int64)  # (B, S - 1)
                picks = np.concatenate([picks, extra], 1)  # (B, S)
            out["start_targets"] = torch.from_numpy(a.items[picks])  # (B, S)
            out["start_weights"] = torch.from_numpy(a.weights[picks])
        return out


class LengthGroupedBatches(Sampler[list[int]]):
    """Random batches of similar length (less padding): shuffle, sort inside pools of ``pool`` batches,
    cut into batches, shuffle the batch order. A new permutation every epoch, reproducible from ``seed``."""

    def __init__(self, lengths: np.ndarray, batch_size: int, pool: int = 50, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.pool, self.seed = np.asarray(lengths), batch_size, pool, seed
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        order = rng.permutation(len(self.lengths))
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [
                chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)
            ]
        for index in rng.permutation(len(batches)):
            yield batches[index]


class EvalQueries(Dataset):
    """One query per (user, target position): history = the user's events before the target."""

    def __init__(
        self,
        data: EncodedLog,
        split: Split,
        stage: str,
        arrays: SequenceArrays,
        max_len: int,
        max_users: int | None = None,
        seed: int = 0,
        first_events: int | None = None,
    ) -> None:
        """``first_events``: the history is only the user's first ``n`` events (the cold-start protocol: a new
        user's information, the same held-out target)."""
        self.first_events = first_events
        users, positions = split.targets(stage)
        if max_users is not None and len(users) > max_users:
            keep = np.sort(np.random.default_rng(seed).choice(len(users), size=max_users, replace=False))
            users, positions = users[keep], positions[keep]
        self.users, self.positions = users, positions
        self.starts = data.user_offsets[users]
        self.arrays, self.max_len = arrays, max_len
        self.targets = arrays.items[positions]

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> int:
        return index

    def history_items(self, index: int) -> np.ndarray:
        """Every item the user had before the target (excluded from ranking)."""
        return self.arrays.items[self.starts[index] : self._end(index)]

    def _end(self, index: int) -> int:
        """End of the history read for query ``index``: the target, or the first ``first_events`` events."""
        if self.first_events is None:
            return int(self.positions[index])
        return int(min(self.positions[index], self.starts[index] + self.first_events))

    def collate(self, batch: list[int]) -> dict[str, torch.Tensor]:
        a = self.arrays
        windows = [slice(max(self.starts[i], self._end(i) - self.max_len), self._end(i)) for i in batch]
        return {
            "index": torch.as_tensor(batch, dtype=torch.long),
            "items": torch.from_numpy(pad_rows([a.items[s] for s in windows], np.int64)),  # (B, L)
            "events": torch.from_numpy(pad_rows([a.events[s] for s in windows], np.int64)),
            "dwell": torch.from_numpy(pad_rows([a.dwell[s] for s in windows], np.float32, -1.0)),
            "gaps": torch.from_numpy(pad_rows([a.gaps[s] for s in windows], np.float32, -1.0)),
            "exclude": torch.from_numpy(pad_rows([self.history_items(i) for i in batch], np.int64)),  # (B, H)
            "targets": torch.from_numpy(self.targets[batch]),  # (B,)
            **a.signals(windows, self.users[batch].tolist()),
        }
