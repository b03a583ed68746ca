"""The Redis store's own properties against a real ``redis-server``: selection by TWOTOWER_STORE, refusals as
StoreUnavailable, erasure out of Redis's files, and nothing acknowledged lost when Redis is killed -9
(``appendfsync always``). The contract shared with SQLite: tests/test_store_contract.py."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.historystore import StoredEvent
from serving.store import SQLiteHistoryStore, StoreUnavailable

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server not on PATH (apt-get install -y redis-server; .ci/run installs it)",
)
redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install -e '.[serve]')")

from serving.redisstore import RedisHistoryStore, open_store  # noqa: E402
from twotower.benchmarks.servers import RedisServer, free_port  # noqa: E402


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as running:
        yield running


def poll(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_twotower_store_selects_the_store_and_a_bad_value_names_the_variable(server, tmp_path, monkeypatch):
    settings = SimpleNamespace(state_dir=str(tmp_path / "state"))
    monkeypatch.delenv("TWOTOWER_STORE", raising=False)
    assert isinstance(open_store(settings, max_events=5), SQLiteHistoryStore)
    monkeypatch.setenv("TWOTOWER_STORE", server.url)
    assert isinstance(open_store(settings, max_events=5), RedisHistoryStore)
    settings.store = "sqlite"  # the settings field, once there, wins over the environment
    assert isinstance(open_store(settings, max_events=5), SQLiteHistoryStore)
    for bad in ("postgres://db/1", "redis://127.0.0.1:6379/notanumber"):
        settings.store = bad
        with pytest.raises(ValueError, match="TWOTOWER_STORE"):
            open_store(settings, max_events=5)


def test_an_unreachable_redis_is_store_unavailable_naming_it_without_the_password():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(
        StoreUnavailable, match=r"redis://:\*\*\*@127\.0\.0\.1:\d+/0 cannot be opened"
    ) as info:
        RedisHistoryStore(url, max_events=5, timeout_s=1)
    assert "s3cret" not in str(info.value)


def test_a_refused_write_is_store_unavailable_reads_keep_working_and_probe_recovers(server):
    store = RedisHistoryStore(server.url, max_events=5)
    store.append([("u", StoredEvent("1", "click", None, 1.0))])
    admin = redis.Redis(port=server.port)
    admin.config_set("min-replicas-to-write", 1)  # no replica: Redis refuses every write (NOREPLICAS)
    try:
        with pytest.raises(StoreUnavailable, match=re.escape(server.url) + ".*NOREPLICAS"):
            store.append([("u", StoredEvent("2", "click", None, 2.0))])
        assert not store.writable and [e.item_id for e in store.history("u")] == ["1"]
        assert store.version("u") is not None and not store.probe()
        with pytest.raises(StoreUnavailable):
            store.record_items([("x", "add", ["c"])])
    finally:
        admin.config_set("min-replicas-to-write", 0)
    assert store.probe() and store.writable  # recovers without a client write
    assert store.append([("u", StoredEvent("2", "click", None, 2.0))]) == 1


def test_a_restarted_redis_is_reconnected_to_without_a_restart_of_the_service(server):
    store = RedisHistoryStore(server.url, max_events=5)
    store.append([("u", StoredEvent("1", "click", None, 1.0))])
    server.kill()
    with pytest.raises(StoreUnavailable, match=re.escape(server.url)):
        store.history("u")
    server.start()
    assert [e.item_id for e in store.history("u")] == ["1"]


def files_holding(directory: Path, *needles: bytes) -> dict[bytes, list[str]]:
    files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    return {n: sorted(name for name, data in files.items() if n in data) for n in needles}


def test_an_erasure_leaves_no_byte_of_the_user_in_redis_files(server):
    """The AOF logs each command: the erased user's events stay in it until it is rewritten from memory,
    which the erasure starts."""
    store = RedisHistoryStore(server.url, max_events=50)
    user, item, dwell = "erase-me-7f3a9c", "item-q81zz", 1234.5678
    store.append([(user, StoredEvent(item, "click", dwell, 5.0 + i)) for i in range(3)])
    store.append([("keep-me-2b", StoredEvent("item-kept", "view", None, 1.0))])
    needles = (user.encode(), item.encode(), repr(dwell).encode(), b"keep-me-2b")
    before = files_holding(server.dir, *needles)
    assert all(before.values()), before  # the scan sees them where Redis wrote them
    assert store.erase(user) == 3
    poll(store.rewrite_done)
    after = files_holding(server.dir, *needles)
    assert after[user.encode()] == after[item.encode()] == after[repr(dwell).encode()] == []
    assert after[b"keep-me-2b"]  # the files were rewritten, not emptied
    server.restart()
    assert store.history(user) == [] and len(store.history("keep-me-2b")) == 1


def test_nothing_acknowledged_is_lost_when_redis_is_killed_with_appendfsync_always(server):
    store = RedisHistoryStore(server.url, max_events=10_000)
    assert store.persistence == "appendonly=yes appendfsync=always"
    acked = []
    for i in range(200):
        batch = [(f"u{i % 7}", StoredEvent(f"{i}-{j}", "click", None, float(i))) for j in range(3)]
        assert store.append(batch) == 3
        acked += [(u, e.item_id) for u, e in batch]
    store.record_items([("fresh", "add", ["c"])])
    server.restart()  # SIGKILL: no shutdown, no final save
    stored = [(f"u{w}", e.item_id) for w in range(7) for e in store.history(f"u{w}")]
    assert sorted(stored) == sorted(acked) and store.catalog_changes() == [("fresh", "add", ["c"])]


def test_a_batch_retried_after_a_lost_reply_is_stored_once(server):
    """redis-py re-sends a command whose connection dropped before the reply: the script runs twice with the
    same batch id, and the second run returns the first one's result without storing anything."""
    store = RedisHistoryStore(server.url, max_events=5)
    calls = []
    script = store._append

    def twice(keys, args):
        calls.append(script(keys=keys, args=args))
        return script(keys=keys, args=args)

    store._append = twice
    assert (
        store.append([("u", StoredEvent("1", "click", None, 1.0)), ("u", StoredEvent("2", "view", 2.0, 2.0))])
        == 2
    )
    assert [e.item_id for e in store.history("u")] == ["1", "2"] and store.version("u") == calls[0][0]


def test_the_sweep_removes_20000_expired_events_of_one_user_and_prunes_the_erasure_log(server):
    """Lua's unpack() takes about 8,000 values: the sweep removes a user's expired events in chunks."""
    store = RedisHistoryStore(server.url, max_events=30_000, retention_s=3600, rewrite_on_erase=False)
    for start in range(0, 20_000, 5_000):
        store.append([("heavy", StoredEvent("1", "click", None, float(start + j))) for j in range(5_000)])
    store.append([("light", StoredEvent("2", "click", None, 1.0))])
    store.erase("gone")
    cutoff = time.time()  # stored before: expired in the sweep below; stored after: kept
    store.append(
        [("heavy", StoredEvent("3", "click", None, 30_000.0)), ("light", StoredEvent("4", "view", None, 2.0))]
    )
    before = store.version("heavy")
    assert store.sweep(now=cutoff + store.retention_s) == 20_001
    assert [e.item_id for e in store.history("heavy")] == ["3"] and store.version("heavy") != before
    assert [e.item_id for e in store.history("light")] == ["4"]
    assert store.erased_since() == []  # the log was pruned after the users were swept
