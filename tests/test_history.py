"""The serving-side history: the time-gap rule shared with training, truncation keeps real gaps."""

from __future__ import annotations

import numpy as np

from serving.core.history import History, time_gaps


def test_time_gaps_rule():
    ts = np.array([100.0, 110.0, 105.0, np.nan, 200.0, 260.0])
    new = np.array([True, False, False, False, False, True])
    assert time_gaps(ts).tolist() == [-1.0, 10.0, 0.0, -1.0, -1.0, 60.0]  # out of order -> 0, unknown -> -1
    assert time_gaps(ts, new).tolist() == [-1.0, 10.0, 0.0, -1.0, -1.0, -1.0]  # a new sequence starts over
    assert time_gaps(np.array([5.0])).tolist() == [-1.0] and time_gaps(np.zeros(0)).tolist() == []


def test_feeds_truncate_to_the_last_events_and_keep_their_gaps():
    history = History.build(
        np.arange(5), ts=np.array([0.0, 10, 30, 60, 100]), dwell=np.array([1, -5, np.nan, 4, 5])
    )
    assert history.dwell.tolist() == [1.0, -1.0, -1.0, 4.0, 5.0]  # negative or missing dwell = unknown
    feeds = history.feeds(max_len=3)
    assert feeds["items"].tolist() == [[3, 4, 5]]  # 1-based rows, most recent three
    assert feeds["gaps"].tolist() == [[20.0, 30.0, 40.0]]  # the oldest kept event keeps its real gap
    assert feeds["events"].tolist() == [[0, 0, 0]] and feeds["dwell"].dtype == np.float32
    assert {k: v.shape for k, v in history.feeds(max_len=10).items()} == dict.fromkeys(feeds, (1, 5))
