"""The history store contract, run against every store: SQLite (embedded default) and Redis (a real
``redis-server`` started here; skipped with the reason when it is not installed)."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
import time

import numpy as np
import pytest

from serving.historystore import StoredEvent, seed_rows
from serving.live import LiveService
from serving.privacy import erasure_key, user_key
from serving.recommender import Recommender
from serving.store import SQLiteHistoryStore, StoreUnavailable

NO_REDIS = "redis-server not on PATH (apt-get install -y redis-server; .ci/run installs it)"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """One ``redis-server`` per module (AOF, ``appendfsync always``) on a free loopback port."""
    if shutil.which("redis-server") is None:
        pytest.skip(NO_REDIS)
    pytest.importorskip("redis", reason="the redis client is not installed (pip install -e '.[serve]')")
    from twotower.benchmarks.servers import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def open_store(spec: tuple[str, str], max_events: int, retention_s: float | None = None):
    """A store from a picklable ``(kind, where)``: the same data however many times it is opened."""
    kind, where = spec
    if kind == "sqlite":
        return SQLiteHistoryStore(where, max_events=max_events, retention_s=retention_s)
    from serving.redisstore import RedisHistoryStore

    return RedisHistoryStore(where, max_events=max_events, retention_s=retention_s)


@pytest.fixture(params=["sqlite", "redis"])
def spec(request, tmp_path):
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "state"))
    server = request.getfixturevalue("redis_server")
    import redis

    with redis.Redis(port=server.port) as client:
        client.flushdb()  # each test starts on an empty database
    return ("redis", server.url)


@pytest.fixture
def make_store(spec):
    return lambda max_events=10, retention_s=None: open_store(spec, max_events, retention_s)


def click(item: str, ts: float) -> StoredEvent:
    return StoredEvent(item, "click", None, ts)


def age(store, user_key: str, seconds: float, item: str | None = None) -> None:
    """Pretend a user's events (or one of them) were stored ``seconds`` earlier than they were."""
    if isinstance(store, SQLiteHistoryStore):
        store.db.execute(
            "UPDATE events SET stored_at = stored_at - ? WHERE user_key = ? AND (? IS NULL OR item_id = ?)",
            (seconds, user_key, item, item),
        )
        return
    key = store.prefix + "e:" + user_key
    for member, ts in store.r.zrange(key, 0, -1, withscores=True):
        row = json.loads(member[16:])
        if item is None or row[0] == item:
            row[3] -= seconds
            store.r.zrem(key, member)
            store.r.zadd(key, {member[:16] + json.dumps(row): ts})
            store.r.zadd(store.prefix + "oldest", {user_key: row[3]}, lt=True)


def stored_user_keys(store) -> list[str]:
    if isinstance(store, SQLiteHistoryStore):
        return [r[0] for r in store.db.execute("SELECT DISTINCT user_key FROM events")]
    return [k[len(store.prefix) + 2 :] for k in store.r.scan_iter(store.prefix + "e:*")]


# ---- the window, versions, erasure, seeding ----------------------------------------------------------
def test_store_orders_bounds_erases_and_seeds_once(make_store):
    store = make_store(max_events=3)
    store.append([("u", click(str(i), 100.0 + i)) for i in range(5)])
    assert store.append([("u", StoredEvent("late", "view", 2.0, 50.0))]) == 0  # older than the kept window
    assert [e.item_id for e in store.history("u")] == ["2", "3", "4"]
    before = store.version("u")
    store.append([("u", click("5", 106.0))])
    assert store.version("u") != before and [e.item_id for e in store.history("u")] == ["3", "4", "5"]
    assert store.seed([("v", click("1", 1.0))], "a") == 1
    assert make_store(max_events=3).seed([("w", click("1", 1.0))], "b") == 0  # once per store, any replica
    assert store.erase("u") == 3 and store.history("u") == [] and store.version("u") is None
    assert store.erased_since(0) == [erasure_key("u")]  # a hash, never the id
    assert store.is_erased("u") and not store.is_erased("v") and not store.is_erased(erasure_key("u"))


def test_equal_timestamps_keep_arrival_order_and_fields_round_trip(make_store):
    store = make_store()
    store.append([("u", StoredEvent("b", "view", 2.5, 7.0)), ("u", StoredEvent("a", "click", None, 7.0))])
    store.append([("u", StoredEvent("c", "<other>", 0.125, 7.0))])
    assert store.history("u") == [StoredEvent("b", "view", 2.5, 7.0), StoredEvent("a", "click", None, 7.0),
                                  StoredEvent("c", "<other>", 0.125, 7.0)]  # fmt: skip
    assert store.history_columns("u") == (("b", "a", "c"), ("view", "click", "<other>"), (2.5, None, 0.125),
                                          (7.0, 7.0, 7.0))  # fmt: skip
    assert store.history_columns("nobody") == ((), (), (), ()) and store.version("nobody") is None


def test_events_older_than_the_kept_window_are_counted_as_trimmed(make_store):
    store = make_store(max_events=3)
    assert store.append_tracked([("u", click(str(i), 100.0 + i)) for i in range(5)]).trimmed == 2
    done = store.append_tracked(
        [("u", click("late", 50.0)), ("u", click("new", 200.0)), ("v", click("x", 1.0))]
    )
    assert done.trimmed == 1 and set(done.versions) == {"u", "v"}
    assert done.versions["v"][0] is None and done.versions["u"][0] is not None
    assert [e.item_id for e in store.history("u")] == ["3", "4", "new"]
    assert store.append([("u", click("late", 60.0))]) == 0  # nothing of it kept


def test_a_version_is_never_reused_after_an_erasure(make_store):
    store = make_store()
    store.append([("u", click("1", 1.0))])
    first = store.version("u")
    store.erase("u")
    store.append([("u", click("1", 1.0))])
    assert store.version("u") not in (None, first)


def test_user_keys_with_separators_are_kept_apart(make_store):
    store = make_store()
    store.append(
        [("team/alice", click("1", 1.0)), ("team:alice", click("2", 1.0)), ("team", click("3", 1.0))]
    )
    assert [[e.item_id for e in store.history(u)] for u in ("team/alice", "team:alice", "team")] == [
        ["1"], ["2"], ["3"]]  # fmt: skip
    assert store.erase("team") == 1 and len(store.history("team:alice")) == 1


# ---- retention ------------------------------------------------------------------------------------------
def test_retention_window(make_store):
    store = make_store(max_events=10, retention_s=60)
    store.append([("u", click("1", 1.0))])
    assert len(store.history("u")) == 1 and store.sweep(now=time.time()) == 0
    assert store.sweep(now=time.time() + 61) == 1 and store.history("u") == []
    assert store.version("u") is None


def test_reads_ignore_expired_events_before_any_sweep(make_store):
    store = make_store(max_events=10, retention_s=60)
    store.append([("u", click("old", 1.0)), ("u", click("new", 2.0))])
    age(store, "u", 120, item="old")
    assert [e.item_id for e in store.history("u")] == ["new"]
    assert store.history_columns("u")[0] == ("new",)
    assert store.counts()["events"] == 2  # still stored: only the sweep deletes


def test_erasure_deletes_expired_events_the_sweep_has_not_reached_yet(make_store):
    store = make_store(max_events=10, retention_s=60)
    store.append([("u", click(str(i), float(i))) for i in range(3)])
    age(store, "u", 3600)
    assert store.history("u") == []  # expired: invisible to reads, still stored
    assert store.erase("u") == 3
    assert store.counts() == {"events": 0, "users": 0} and store.version("u") is None


def test_the_erasure_log_is_pruned_by_the_retention_window(make_store):
    store = make_store(max_events=10, retention_s=60)
    store.append([("u", click("1", 1.0))])
    store.erase("u")
    assert store.erased_since(0) == [erasure_key("u")]
    store.sweep(now=time.time() + 30)
    assert len(store.erased_since(0)) == 1
    store.sweep(now=time.time() + 61)
    assert store.erased_since(0) == [] and not store.is_erased("u")


def test_a_sweep_gives_new_versions_so_the_live_cache_stops_serving_expired_events(
    run_and_bundle, make_store
):
    rec = Recommender.load(run_and_bundle[1])
    store = make_store(max_events=50, retention_s=3600)
    live = LiveService(rec, store)
    a, b, c = rec.item_ids[:3]
    now = time.time()
    live.ingest(
        [{"user_id": "partly", "item_id": a, "ts": now - 10}, {"user_id": "partly", "item_id": b, "ts": now}]
    )
    live.ingest([{"user_id": "wholly", "item_id": c}])
    assert live.stored_history("partly").n_events == 2 and live.stored_history("wholly").n_events == 1
    age(store, "partly", 7200, item=a)
    age(store, "wholly", 7200)
    assert store.sweep() == 2
    assert live.stored_history("partly").n_events == 1
    assert live.stored_history("wholly") is None
    assert live.recommend(user_id="wholly", k=5).source == "popularity"
    personal = live.recommend(user_id="partly", k=50)
    assert personal.history_length == 1 and a in {x["item_id"] for x in personal.items}  # no longer excluded


# ---- key schemes, catalog changes -------------------------------------------------------------------------
def test_a_store_of_raw_ids_is_re_keyed_once_and_never_read_with_another_key(make_store):
    store = make_store()
    store.append([("alice@example.com", click("1", 1.0)), ("bob", click("2", 2.0))])
    scheme, rekey = "hmac-sha256:k1", lambda u: user_key(b"k1", u)
    assert store.adopt_key_scheme(scheme, rekey) == 2
    assert sorted(stored_user_keys(store)) == sorted([rekey("alice@example.com"), rekey("bob")])
    assert [e.item_id for e in store.history(rekey("alice@example.com"))] == ["1"]
    assert store.history("alice@example.com") == []
    again = make_store()
    assert again.adopt_key_scheme(scheme, rekey) == 0  # a second replica with the same key
    for other in ("hmac-sha256:k2", "raw"):
        with pytest.raises(StoreUnavailable, match="TWOTOWER_PSEUDONYM_KEY"):
            make_store().adopt_key_scheme(other, lambda u: u)


def test_catalog_changes_are_recorded_all_or_none_and_replayed(make_store):
    store = make_store()
    store.record_items([("fresh", "add", ["Drama", "Comedy"]), ("old", "remove", [])])
    store.record_items([("fresh", "remove", [])])
    assert sorted(make_store().catalog_changes()) == [("fresh", "remove", []), ("old", "remove", [])]


def test_pseudonymised_ids_are_not_stored(run_and_bundle, make_store):
    rec = Recommender.load(run_and_bundle[1])
    store = make_store(max_events=50)
    live = LiveService(rec, store, pseudonym_key="secret")
    live.ingest([{"user_id": "alice@example.com", "item_id": rec.item_ids[0]}])
    keys = stored_user_keys(store)
    assert keys == [live.user_key("alice@example.com")] and "alice" not in keys[0] and len(keys[0]) == 64
    assert live.user_events("alice@example.com")[0]["item_id"] == rec.item_ids[0]
    assert LiveService(rec, store, pseudonym_key="other").user_events("alice@example.com") == []


# ---- concurrency -------------------------------------------------------------------------------------------
def _writer(spec: tuple[str, str], worker: int, n: int) -> None:
    store = open_store(spec, max_events=10_000)
    for i in range(n):
        store.append([(f"p{worker}", click(f"{worker}-{i}-{j}", float(i))) for j in range(3)])


def test_concurrent_threads_and_processes_lose_nothing_and_see_whole_batches(spec, make_store):
    store = make_store(max_events=10_000)
    torn = []

    def read_loop(stop):
        while not stop.is_set():
            for w in range(4):
                count = len(store.history(f"p{w}")) + len(store.history(f"t{w}"))
                if count % 3:  # batches of three: a reader sees all of one or none
                    torn.append(count)

    def thread_writer(w):
        for i in range(40):
            store.append([(f"t{w}", StoredEvent(f"{w}-{i}-{j}", "view", 1.0, float(i))) for j in range(3)])

    stop = threading.Event()
    reader = threading.Thread(target=read_loop, args=(stop,))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(spec, w, 40)) for w in range(2)]
    threads = [threading.Thread(target=thread_writer, args=(w,)) for w in range(3)]
    try:  # a failure below must fail the test, not leave the reader or a writer running forever
        reader.start()
        for worker in procs + threads:
            worker.start()
        for t in threads:
            t.join(60)
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0] and not any(t.is_alive() for t in threads)
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()
        reader.join(10)
    assert not torn
    assert [len(store.history(f"p{w}")) for w in range(2)] == [120, 120]
    assert [len(store.history(f"t{w}")) for w in range(3)] == [120, 120, 120]


# ---- the live service over each store -----------------------------------------------------------------------
@pytest.fixture
def live(run_and_bundle, make_store):
    rec = Recommender.load(run_and_bundle[1])
    store = make_store(max_events=rec.max_len + 1)
    store.seed(seed_rows(rec), source="test")
    return LiveService(rec, store)


def test_cached_history_extended_on_ingest_equals_a_re_read(live):
    rec = live.recommender
    seeded = next(iter(rec.histories))  # at the store's bound: the oldest event drops out
    items = rec.item_ids
    now = time.time()
    for user in (seeded, "fresh-user"):
        live.ingest([{"user_id": user, "item_id": items[1], "event": "click", "ts": now - 500}])
        live.recommend(user_id=user)  # cached now
        for step in range(3):
            live.ingest([{"user_id": user, "item_id": items[2 + step], "dwell_s": 5.0 * step, "ts": now - 400 + 100 * step},
                         {"user_id": user, "item_id": items[9], "event": "purchase", "ts": now - 399 + 100 * step}])  # fmt: skip
            cached = live.stored_history(user)
            live._cache.clear()
            reread = live.stored_history(user)
            assert cached.n_events == reread.n_events and cached.last_ts == reread.last_ts
            for name, array in cached.history.feeds(rec.max_len).items():
                np.testing.assert_array_equal(array, reread.history.feeds(rec.max_len)[name], err_msg=name)
    live.ingest(
        [{"user_id": "fresh-user", "item_id": items[3], "ts": now - 1000}]
    )  # older: re-read next time
    assert "fresh-user" not in live._cache


@pytest.mark.parametrize("short", [True, False])
def test_cached_extension_equals_a_re_read_when_the_store_keeps_at_most_the_window(run_and_bundle, make_store,
                                                                                     short):  # fmt: skip
    """The first kept event's predecessor is gone after a cut: the extension's first gap is unknown too."""
    rec = Recommender.load(run_and_bundle[1])
    live = LiveService(rec, make_store(max_events=4 if short else rec.max_len))
    items, start, bound = rec.item_ids, time.time() - 10_000, live.store.max_events
    live.ingest([{"user_id": "w", "item_id": items[i], "ts": start + 60 * i} for i in range(bound)])
    live.stored_history("w")  # cached, at the bound
    for step in range(3):
        live.ingest([{"user_id": "w", "item_id": items[9 + step], "ts": start + 5000 + 100 * step}])
        cached = live.stored_history("w")
        live._cache.clear()
        reread = live.stored_history("w")
        assert cached.n_events == reread.n_events == bound
        for name, array in cached.history.feeds(rec.max_len).items():
            np.testing.assert_array_equal(array, reread.history.feeds(rec.max_len)[name], err_msg=name)


def test_seeded_users_match_the_bundle_histories(live):
    rec = live.recommender
    for user in list(rec.histories)[:5]:
        assert [x["item_id"] for x in live.recommend(user_id=user, k=10).items] == [
            x["item_id"] for x in rec.recommend(user_id=user, k=10).items
        ]


def test_a_write_from_another_store_object_is_seen_by_the_next_answer(live, make_store):
    """What a second replica does: its own store object on the same data, its own per-process cache."""
    other = LiveService(live.recommender, make_store(max_events=live.store.max_events))
    items = live.recommender.item_ids
    assert other.recommend(user_id="shared", k=5).source == "popularity"
    live.ingest([{"user_id": "shared", "item_id": i} for i in items[:3]])
    assert other.recommend(user_id="shared", k=5).history_length == 3
    live.ingest([{"user_id": "shared", "item_id": items[4]}])
    assert other.recommend(user_id="shared", k=5).history_length == 4  # its cached copy was stale
    live.erase("shared")
    assert other.recommend(user_id="shared", k=5).source == "popularity"
