"""The serving-side history: the time-gap rule shared with training, truncation keeps real gaps."""

from __future__ import annotations

import numpy as np

from serving.core.history import History, time_gaps
from serving.core.results import ResolvedHistory


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


def resolved(ts: list[float]) -> ResolvedHistory:
    return ResolvedHistory(
        History.build(np.arange(len(ts)), ts=np.array(ts)), n_events=len(ts), last_ts=ts[-1]
    )


def test_a_cut_extension_equals_a_re_read_of_the_kept_window():
    """After the store drops the oldest events, the new first event's predecessor is gone: its gap is unknown."""
    ts = [0.0, 10, 30, 60, 100, 150]
    old, more = resolved(ts[:4]), resolved(ts[4:])
    more.history = History.build(
        np.arange(4, 6), gaps=time_gaps(np.array(ts[3:]))[1:]
    )  # gaps from old's last
    for max_events in (2, 3, 4, 5, 6, 9):
        joined = old.extended(more, max_events)
        kept = ts[-min(max_events, len(ts)) :]
        reread = History.build(np.arange(len(ts))[-len(kept) :], ts=np.array(kept))
        assert joined.n_events == len(kept) and joined.last_ts == 150.0
        assert joined.history.rows.tolist() == reread.rows.tolist(), max_events
        assert joined.history.gaps.tolist() == reread.gaps.tolist(), max_events
    assert old.extended(more, 1) is None  # the new events alone are over the bound: re-read instead
