"""Splits and sequence views: no target leaks into its history; training targets see only earlier events."""

from __future__ import annotations

import numpy as np

from twotower.data.sequences import EvalQueries, SequenceArrays, TrainWindows, event_gaps
from twotower.data.splits import time_cut


def test_leave_last_out_positions(tiny_data, tiny_split):
    ends = tiny_data.user_offsets[1:]
    assert np.array_equal(tiny_split.test_pos, ends - 1)
    assert np.array_equal(tiny_split.val_pos, ends - 2)
    mask = tiny_split.train_mask(tiny_data)
    assert not mask[tiny_split.test_pos].any() and not mask[tiny_split.val_pos].any()
    assert mask.sum() == tiny_data.n_interactions - 2 * tiny_data.n_users


def test_training_windows_only_look_back(tiny_data, tiny_split):
    arrays = SequenceArrays.from_log(tiny_data)
    windows = TrainWindows(tiny_data, tiny_split, arrays, max_len=5)
    train = tiny_split.train_mask(tiny_data)
    seen_targets = []
    for begin, end in windows.windows:
        assert tiny_data.users[begin] == tiny_data.users[end - 1]  # one user per window
        assert train[begin:end].all()  # never a validation or test event
        assert end - begin - 1 <= 5
        seen_targets.extend(range(begin + 1, end))
    # every training event except each user's first is a target exactly once
    firsts = set(tiny_data.user_offsets[:-1].tolist())
    expected = [i for i in np.flatnonzero(train) if i not in firsts]
    assert sorted(seen_targets) == expected
    batch = windows.collate([windows[0]])
    begin, end = windows.windows[0]
    assert batch["items"][0, : end - begin - 1].tolist() == tiny_data.items[begin : end - 1].tolist()
    assert batch["targets"][0, : end - begin - 1].tolist() == tiny_data.items[begin + 1 : end].tolist()


def test_eval_history_precedes_target(tiny_data, tiny_split):
    arrays = SequenceArrays.from_log(tiny_data)
    queries = EvalQueries(tiny_data, tiny_split, "test", arrays, max_len=4)
    batch = queries.collate(list(range(len(queries))))
    for row, (user, pos) in enumerate(zip(queries.users, queries.positions, strict=True)):
        start = tiny_data.user_offsets[user]
        assert pos == tiny_data.user_offsets[user + 1] - 1
        history = batch["exclude"][row]
        assert history[history > 0].tolist() == tiny_data.items[start:pos].tolist()
        model_in = batch["items"][row]
        assert model_in[model_in > 0].tolist() == tiny_data.items[max(start, pos - 4) : pos].tolist()
        assert batch["targets"][row] == tiny_data.items[pos]


def test_time_cut(tiny_data):
    split = time_cut(tiny_data, val_quantile=0.8, test_quantile=0.9)
    val_cut, test_cut = np.quantile(tiny_data.ts, [0.8, 0.9])
    train = split.train_mask(tiny_data)
    assert (tiny_data.ts[train] < val_cut).all()
    users, pos = split.targets("test")
    assert (tiny_data.ts[pos] >= test_cut).all()
    for u, p in zip(users, pos, strict=True):
        start = tiny_data.user_offsets[u]
        assert p > start and (tiny_data.ts[start:p] < test_cut).all()  # the first event after the cut


def test_event_gaps(tiny_data):
    gaps = event_gaps(tiny_data)
    assert (gaps[tiny_data.user_offsets[:-1]] == -1).all()
    i = tiny_data.user_offsets[0] + 1
    assert gaps[i] == np.float32(tiny_data.ts[i] - tiny_data.ts[i - 1])


def test_shuffled_ties_keep_time_order_and_events(tiny_data, tiny_split):
    arrays = SequenceArrays.from_log(tiny_data)
    windows = TrainWindows(tiny_data, tiny_split, arrays, max_len=50, shuffle_ties=True, seed=1)
    begin, end = windows.windows[0]
    ts = tiny_data.ts.copy()
    ts[begin:end] = ts[begin]  # make the whole window one tie group
    windows.ts = ts
    orders = {tuple(windows._window_order(begin, end)) for _ in range(5)}
    assert len(orders) > 1  # ties are reshuffled
    for order in orders:
        assert sorted(order) == list(range(begin, end))
    windows.ts = tiny_data.ts  # strictly increasing times (synthetic): nothing moves
    strictly = np.all(np.diff(tiny_data.ts[begin:end]) > 0)
    assert not strictly or list(windows._window_order(begin, end)) == list(range(begin, end))
