"""The SQLite store's own properties: durability settings read back, faults as StoreUnavailable (the contract
every store meets, window and retention included: tests/test_store_contract.py)."""

from __future__ import annotations

import os
import re
import threading

import pytest

from serving.historystore import StoredEvent
from serving.live import LiveService
from serving.recommender import Recommender
from serving.store import SQLiteHistoryStore, StoreUnavailable


def click(item: str, ts: float) -> StoredEvent:
    return StoredEvent(item, "click", None, ts)


# ---- durability settings ---------------------------------------------------------------------------------
def test_synchronous_off_cannot_be_configured(tmp_path):
    for value in ("OFF", "off", "0"):
        with pytest.raises(ValueError, match="synchronous must be FULL, NORMAL or EXTRA"):
            SQLiteHistoryStore(tmp_path, max_events=5, synchronous=value)


def test_every_connection_reports_the_durability_it_was_asked_for(tmp_path):
    """Read back on the raw connection, not through the store: a planted ``synchronous=OFF`` fails here."""
    full = SQLiteHistoryStore(tmp_path / "full", max_events=5)
    normal = SQLiteHistoryStore(tmp_path / "normal", max_events=5, synchronous="NORMAL")
    settings = ("synchronous", "journal_mode", "secure_delete")

    def read(store):
        return tuple(store.db.execute(f"PRAGMA {name}").fetchone()[0] for name in settings)

    seen = {}
    thread = threading.Thread(target=lambda: seen.update(other=read(full)))  # a second thread's connection
    thread.start()
    thread.join()
    assert read(full) == seen["other"] == (2, "wal", 1)
    assert read(normal) == (1, "wal", 1)


def test_a_pragma_that_did_not_apply_refuses_the_connection(tmp_path):
    store = SQLiteHistoryStore(tmp_path, max_events=5)
    store.close()
    store._pragmas = tuple(p.replace("synchronous=FULL", "synchronous=OFF") for p in store._pragmas)
    with pytest.raises(
        StoreUnavailable, match=r"\(synchronous, journal_mode, secure_delete\) is \(0, 'wal', 1\)"
    ):
        store.db.execute("SELECT 1")


# ---- faults: the disk refuses writes ---------------------------------------------------------------------
def test_a_read_only_store_raises_store_unavailable_naming_the_file_and_reads_keep_working(tmp_path):
    """``query_only`` makes SQLite itself answer SQLITE_READONLY through the store's own connection (as a
    read-only file or mount does), so the real error mapping runs; chmod would not stop root, which runs
    these tests here."""
    store = SQLiteHistoryStore(tmp_path, max_events=5)
    store.append([("u", click("1", 1.0))])
    store.db.execute("PRAGMA query_only=ON")
    with pytest.raises(StoreUnavailable, match=re.escape(str(store.path)) + ".*readonly"):
        store.append([("u", click("2", 2.0))])
    assert not store.writable and [e.item_id for e in store.history("u")] == ["1"]
    with pytest.raises(StoreUnavailable):
        store.erase("u")
    assert not store.probe() and store.history("u")
    store.db.execute("PRAGMA query_only=OFF")
    assert store.probe() and store.writable  # recovers without a client write
    assert store.append([("u", click("2", 2.0))]) == 1 and store.writable


def test_a_full_disk_raises_store_unavailable_and_nothing_of_the_batch_is_stored(run_and_bundle, tmp_path):
    """``max_page_count`` caps the file at its size: SQLite answers SQLITE_FULL as on a full disk."""
    rec = Recommender.load(run_and_bundle[1])
    store = SQLiteHistoryStore(tmp_path, max_events=10_000)
    live = LiveService(rec, store)
    item = rec.item_ids[0]
    live.ingest([{"user_id": "u", "item_id": item}])
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")
    batch = [{"user_id": f"user-{i}-" + "x" * 200, "item_id": item} for i in range(500)]
    with pytest.raises(StoreUnavailable, match=re.escape(str(store.path)) + ".*full"):
        live.ingest(batch)
    assert not live.writable and store.counts() == {"events": 1, "users": 1}
    assert live.user_events("u")[0]["item_id"] == item  # reads keep working
    store.db.execute(f"PRAGMA max_page_count={pages * 1000}")
    assert live.ingest(batch) == 500 and live.writable


def test_start_up_on_a_state_dir_that_cannot_hold_a_store_names_the_path(tmp_path):
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file where the state dir should be")
    with pytest.raises(StoreUnavailable, match=re.escape(str(not_a_dir))):
        SQLiteHistoryStore(not_a_dir, max_events=5)
    (tmp_path / "other" / "history.sqlite3").mkdir(parents=True)  # the database path is taken by a directory
    with pytest.raises(StoreUnavailable, match=re.escape(str(tmp_path / "other" / "history.sqlite3"))):
        SQLiteHistoryStore(tmp_path / "other", max_events=5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; the query_only test covers it here")
def test_start_up_on_a_read_only_state_dir_names_the_path(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreUnavailable, match=re.escape(str(tmp_path))):
            SQLiteHistoryStore(tmp_path, max_events=5)
    finally:
        tmp_path.chmod(0o700)


# ---- catalog changes the disk refuses ------------------------------------------------------------------------
def test_a_catalog_change_the_disk_refuses_is_not_served_and_a_retry_works(run_and_bundle, tmp_path):
    rec = Recommender.load(run_and_bundle[1])
    live = LiveService(rec, SQLiteHistoryStore(tmp_path, max_events=50))
    category, gone = rec.bundle.categories[1], rec.item_ids[0]
    live.store.db.execute("PRAGMA query_only=ON")
    with pytest.raises(StoreUnavailable, match="readonly"):
        live.add_items([("fresh", [category])])
    with pytest.raises(StoreUnavailable, match="readonly"):
        live.remove_items([gone])
    assert "fresh" not in rec.catalog and gone in rec.catalog and live.store.catalog_changes() == []
    live.store.db.execute("PRAGMA query_only=OFF")
    assert live.add_items([("fresh", [category])]) == ["fresh"] and live.remove_items([gone]) == [gone]
    assert {(i, a) for i, a, _ in live.store.catalog_changes()} == {("fresh", "add"), (gone, "remove")}
