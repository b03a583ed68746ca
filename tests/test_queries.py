"""Search queries: the shared hashing (parity, golden values, determinism), how a log's searches become
per-position tokens, the model's query input, and search events in the history stores."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from serving.core import texthash
from serving.core.history import History
from serving.core.signals import SignalError, Signals
from serving.core.texthash import (
    MAX_QUERY_CHARS,
    QueryError,
    QueryHashing,
    check_query,
    hash_queries,
    hash_query,
    merge_tokens,
    tokens,
)
from serving.historystore import StoredEvent
from serving.store import SQLiteHistoryStore
from twotower.config import PROJECT_ROOT
from twotower.data.encode import encode_log
from twotower.data.schema import ITEM, QUERY, TIME, USER, LoadReport, RawLog
from twotower.model import TwoTower
from twotower.model_config import ModelConfig

ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz ABC  0123456789-_.,!?éüßçñ東京大学 Россия ελληνικά 😀👍🏽 \u0301\u00a0\t"
)


def random_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_serving_hashing_equals_trainings_on_10000_random_strings():
    texts = random_strings(10_000)
    training = hash_queries(texts)  # the path the log encoder takes (whole column, repeats hashed once)
    texthash._hash_query.cache_clear()  # serving hashes anew, not from training's cache
    texthash.bucket.cache_clear()
    serving = np.stack([hash_query(t) for t in texts])  # the path a request takes (one query at a time)
    np.testing.assert_array_equal(training, serving)
    assert (training > 0).any(axis=1).mean() > 0.9 and training.max() < QueryHashing().buckets


GOLDEN = {  # a change of the hashing changes these: bump texthash.HASH_VERSION and retrain
    "star wars": [9713, 6443, 15135, 7488, 4964, 6369, 4600, 15968, 15151, 6386, 12666],
    "Star  WARS!": [9713, 6443, 15135, 7488, 4964, 6369, 4600, 15968, 15151, 6386, 12666],
    "東京": [8703, 5105, 8130],
}


def test_golden_buckets():
    for text, expected in GOLDEN.items():
        row = hash_query(text)
        assert row[: len(expected)].tolist() == expected, text
        assert not row[len(expected) :].any()


def test_hashing_is_the_same_in_another_process_with_another_hash_seed():
    code = "from serving.core.texthash import hash_query; print(hash_query('star wars 東京 😀').tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=PROJECT_ROOT)  # fmt: skip
    assert out.stdout.strip() == str(hash_query("star wars 東京 😀").tolist())


def test_tokens_truncation_and_merging():
    assert tokens("Red shoes") == ["w:red", "w:shoes", "b:red shoes", "c:<re", "c:red", "c:ed>", "c:<sh",
                                   "c:sho", "c:hoe", "c:oes", "c:es>"]  # fmt: skip
    settings = QueryHashing(max_tokens=4)
    assert (hash_query("a b c d e f", settings) > 0).sum() == 4
    a, b = hash_query("red", settings), hash_query("blue", settings)
    merged = merge_tokens([a, b], 4)  # newest first
    assert merged.tolist() == [*b[b > 0].tolist(), *a[a > 0].tolist()][:4]


@pytest.mark.parametrize("bad", ["", "   ", "?!", "x" * (MAX_QUERY_CHARS + 1), 5, None])
def test_bad_queries_are_refused_naming_the_field(bad):
    with pytest.raises(QueryError, match="history\\[3\\].query"):
        check_query(bad, "history[3].query")


def _log(rows: list[tuple]) -> RawLog:
    events = pd.DataFrame(rows, columns=[USER, ITEM, TIME, QUERY])
    return RawLog(events=events, report=LoadReport(rows_read=len(events)))


def test_a_logs_searches_are_read_by_the_item_before_them():
    data = encode_log(_log([
        ("u", None, 0.0, "too early"),  # before the first item: dropped, counted
        ("u", "a", 1.0, None), ("u", None, 2.0, "first"), ("u", None, 3.0, "second"),
        ("u", "b", 4.0, "with b"),  # an item row's own query: read by the position before it
        ("u", "c", 5.0, None), ("v", "a", 1.0, None), ("v", "b", 2.0, None), ("v", "c", 3.0, None),
    ]))  # fmt: skip
    assert (
        data.n_interactions == 6 and data.report.searches == 3 and data.report.searches_before_first_item == 1
    )
    assert data.query_texts[:3] == [["first", "second", "with b"], [], []]
    expected = merge_tokens([hash_query(t) for t in ("first", "second", "with b")], 32)
    np.testing.assert_array_equal(data.queries[0], expected)
    assert not data.queries[1:].any()


def test_the_model_reads_a_positions_query_and_nothing_else_changes():
    config = ModelConfig(n_items=20, dim=16, max_len=8, dropout=0.0, query_buckets=64, max_query_tokens=4)
    torch.manual_seed(0)
    net = TwoTower(config).eval()
    items = torch.tensor([[3, 4, 5]])
    inputs = (items, torch.zeros_like(items), -torch.ones(1, 3), -torch.ones(1, 3))
    none = torch.zeros(1, 3, 4, dtype=torch.long)
    search = none.clone()
    search[0, 2, :2] = torch.tensor([7, 9])
    base = net.encode_user(*inputs)
    torch.testing.assert_close(net.encode_user(*inputs, queries=none), base)  # no token: the same vector
    assert (net.encode_user(*inputs, queries=search) - base).abs().max() > 1e-4
    earlier = none.clone()
    earlier[0, 2] = search[0, 2]
    states = net.user_states(*inputs, queries=earlier)
    torch.testing.assert_close(states[:, :2], net.user_states(*inputs)[:, :2])  # causal: later queries unseen


def test_serving_splits_a_history_with_searches():
    signals = Signals(hashing=QueryHashing(max_tokens=8))
    entries = [{"query": "before"}, "a", "zzz", {"query": "after a"}, "b", {"query": "last"}]
    positions, ids, texts, unread = signals.split_history(entries, lambda i: i in {"a", "b"})
    assert positions == [1, 2, 4] and ids == ["a", "zzz", "b"] and unread == 1
    assert texts == {0: ["after a"], 2: ["last"]}  # after an unknown id: the last known item reads it
    tokens_ = signals.query_tokens(texts, 3)
    np.testing.assert_array_equal(tokens_[2], hash_query("last", signals.hashing))
    with pytest.raises(SignalError, match=r"history\[0\].query"):
        signals.split_history([{"query": " "}], lambda i: True)
    history = History.build(np.array([1, 2])).with_signals(queries=np.ones((2, 8), np.int64))
    assert signals.feeds(history, 50, None)["queries"].shape == (1, 2, 8)


def test_the_store_keeps_searches_and_erasure_removes_them(tmp_path):
    store = SQLiteHistoryStore(tmp_path / "state", max_events=10)
    store.append(
        [("u", StoredEvent("a", "click", None, 1.0)), ("u", StoredEvent("", "<search>", None, 2.0, "qzxjvk"))]
    )
    assert store.history("u")[1] == StoredEvent("", "<search>", None, 2.0, "qzxjvk")
    items, events, _, ts = store.history_columns("u")
    assert items == ("a", {"query": "qzxjvk"}) and events == ("click", "<search>") and ts == (1.0, 2.0)
    assert store.erase("u") == 2 and store.history("u") == []
    raw = (tmp_path / "state" / "history.sqlite3").read_bytes()
    assert b"qzxjvk" not in raw  # the query's bytes left the file
