"""The real-time loop: store, validation, adaptation, erasure, pseudonyms, live items, reload, access control."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.historystore import seed_rows
from serving.live import EventsRejected, LiveService
from serving.recommender import Recommender
from serving.settings import Settings
from serving.store import SQLiteHistoryStore, StoreUnavailable


@pytest.fixture
def live(run_and_bundle, tmp_path):
    rec = Recommender.load(run_and_bundle[1])
    store = SQLiteHistoryStore(tmp_path / "state", max_events=rec.max_len + 1)
    service = LiveService(rec, store)
    store.seed(seed_rows(rec), source="test")
    return service


def ev(user, item, event=None, dwell=None, ts=None):
    return {"user_id": user, "item_id": item, "event": event, "dwell_s": dwell, "ts": ts}


def test_bad_events_are_refused_one_by_one_and_nothing_is_stored(live):
    item = live.recommender.item_ids[0]
    now = time.time()
    bad = [ev("u", "ghost"), ev("u", item, event="teleport"), ev("u", item, dwell=-1), ev("u", item, dwell=1e9),
           ev("u", item, ts=now + 3600), ev("u", item, ts=float("nan")), ev("u", item, ts=now * 1000 - now * 999 - 1e10)]  # fmt: skip
    with pytest.raises(EventsRejected) as info:
        live.ingest([ev("u", item)] + bad)
    assert [(e.index, e.field) for e in info.value.errors] == [
        (1, "item_id"), (2, "event"), (3, "dwell_s"), (4, "dwell_s"), (5, "ts"), (6, "ts"), (7, "ts")]  # fmt: skip
    assert live.user_events("u") == []  # the good first event was not stored either


def test_events_on_a_taken_down_item_are_still_stored(live):
    """Taking an item out of answers does not make the clicks on it unknown: histories keep them."""
    item = live.recommender.item_ids[0]
    live.remove_items([item])
    assert live.ingest([ev("late-click", item)]) == 1
    assert [e["item_id"] for e in live.user_events("late-click")] == [item]


def test_new_user_adapts_and_erasure_returns_to_the_fallback(live):
    rec = live.recommender
    anonymous = live.recommend(user_id="newcomer", k=10)
    assert anonymous.source == "popularity"
    clicks = rec.item_ids[:5]
    assert live.ingest([ev("newcomer", i, event="click", dwell=30.0) for i in clicks]) == 5
    assert live.ingest([ev("someone", clicks[0], event="other")]) == 1  # the bucket's plain name is accepted
    personal = live.recommend(user_id="newcomer", k=10)
    assert personal.source == "model" and personal.history_length == 5
    assert not set(clicks) & {x["item_id"] for x in personal.items}
    stamps = [e["ts"] for e in live.user_events("newcomer")]  # the store's clock: same-second gaps are 0
    expected = rec.recommend(history=clicks, events=["click"] * 5, dwell=[30.0] * 5, ts=stamps, k=10)
    assert [x["item_id"] for x in personal.items] == [x["item_id"] for x in expected.items]
    live.ingest([ev("newcomer", rec.item_ids[7], event="purchase")])  # the next answer sees the new event
    assert live.recommend(user_id="newcomer", k=10).history_length == 6
    stored = live.user_events("newcomer")
    assert [e["item_id"] for e in stored] == clicks + [rec.item_ids[7]] and stored[0]["event"] == "click"
    assert live.erase("newcomer") == 6 and live.user_events("newcomer") == []
    assert live.recommend(user_id="newcomer", k=10).items == anonymous.items


def test_new_items_get_the_item_towers_category_vector_and_can_be_removed(run_and_bundle, live):
    from twotower.artifacts import load_model

    rec = live.recommender
    net = load_model(run_and_bundle[0] / "model.pt")
    names = rec.bundle.categories
    with torch.no_grad():
        ref = net.encode_new_items(torch.tensor([[1, 2]])).numpy()[0]
    np.testing.assert_allclose(rec.catalog.new_item_vector([names[1], names[2]]), ref, atol=1e-6)
    with pytest.raises(ValueError, match="unknown categories"):
        live.add_items([("fresh", ["no-such-category"])])
    with pytest.raises(ValueError, match="already in the catalog"):
        live.add_items([(rec.item_ids[0], [names[1]])])
    assert live.add_items([("fresh", [names[1]])]) == ["fresh"]
    assert {x["item_id"] for x in rec.similar_items("fresh", 5)} and "fresh" in rec.catalog.changes.row_of
    # an allow-list of just the new item returns it: it is searched with the rest
    user = next(iter(rec.histories))
    assert [x["item_id"] for x in live.recommend(user_id=user, k=3, allow_items=["fresh"]).items] == ["fresh"]
    live.ingest([ev("buyer", "fresh", event="purchase")])  # events on new items are accepted and excluded
    assert "fresh" not in {x["item_id"] for x in live.recommend(user_id="buyer", k=50).items}
    top = live.recommend(user_id=user, k=10).items
    live.remove_items([top[0]["item_id"], "fresh"])
    after = live.recommend(user_id=user, k=10).items
    assert len(after) == 10 and not {top[0]["item_id"], "fresh"} & {x["item_id"] for x in after}
    assert top[0]["item_id"] not in {x["item_id"] for x in live.recommend(user_id="nobody", k=200).items}
    with pytest.raises(KeyError):
        live.remove_items(["fresh"])
    # a restart replays the changes from the store
    again = LiveService(Recommender.load(run_and_bundle[1]), live.store)
    from serving.live import apply_catalog_changes

    apply_catalog_changes(again.recommender, live.store)
    assert top[0]["item_id"] not in {x["item_id"] for x in again.recommend(user_id=user, k=10).items}


def test_reload_swaps_without_failing_requests_and_keeps_histories(run_and_bundle, live):
    live.ingest([ev("reader", live.recommender.item_ids[3])])
    old = live.recommender
    errors, done = [], threading.Event()

    def hammer():
        while not done.is_set():
            try:
                assert live.recommend(user_id="reader", k=5).source == "model"
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    for _ in range(2):
        live.reload(run_and_bundle[1])
    done.set()
    for w in workers:
        w.join()
    assert not errors and live.recommender is not old
    assert live.recommend(user_id="reader", k=5).history_length == 1


@pytest.fixture
def secured(run_and_bundle, tmp_path):
    settings = Settings(bundle=str(run_and_bundle[1]), state_dir=str(tmp_path / "s"), api_token="t0ken",
                        max_batch_events=5)  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_http_loop_with_access_control(secured, run_and_bundle):
    auth = {"Authorization": "Bearer t0ken"}
    item = secured.app.state.live.recommender.item_ids[0]
    body = {"events": [{"user_id": "h", "item_id": item, "event": "click", "dwell_s": 12.5}]}
    assert secured.post("/events", json=body).status_code == 401
    assert secured.post("/events", json=body, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert secured.post("/events", json=body, headers=auth).json() == {"accepted": 1, "trimmed": 0}
    assert (
        secured.post("/recommend", json={"user_id": "h", "k": 3}).status_code == 401
    )  # a stored user's data
    assert secured.post("/recommend", json={"user_id": "h", "k": 3}, headers=auth).json()["source"] == "model"
    history = secured.get("/users/h/history", headers=auth).json()
    assert history["user_id"] == "h" and history["events"][0]["item_id"] == item
    assert history["events"][0]["dwell_s"] == 12.5 and history["events"][0]["event"] == "click"
    assert secured.get("/users/h/history").status_code == 401
    bad = secured.post("/events", json={"events": [{"user_id": "h", "item_id": "ghost"}]}, headers=auth)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "events", 0, "item_id"]
    assert secured.post("/events", json={"events": body["events"] * 6}, headers=auth).status_code == 413
    assert secured.post("/events", json={"events": []}, headers=auth).status_code == 422
    assert secured.post("/events", json={"events": [{"user_id": "h"}]}, headers=auth).status_code == 422
    cats = secured.app.state.live.recommender.bundle.categories
    added = secured.post("/items", json={"items": [{"item_id": "n1", "categories": [cats[1]]}]}, headers=auth)
    assert added.json() == {"items": ["n1"]}
    assert secured.post("/items", json={"items": [{"item_id": "n1", "categories": [cats[1]]}]},
                        headers=auth).status_code == 409  # fmt: skip
    assert secured.post("/items", json={"items": [{"item_id": "n2", "categories": ["?"]}]},
                        headers=auth).status_code == 422  # fmt: skip
    assert secured.delete("/items/n1", headers=auth).json() == {"items": ["n1"]}
    assert secured.delete("/items/n1", headers=auth).status_code == 404
    assert secured.delete("/users/h", headers=auth).json() == {"user_id": "h", "deleted": 1}
    assert (
        secured.post("/recommend", json={"user_id": "h", "k": 3}, headers=auth).json()["source"]
        == "popularity"
    )
    reload = secured.post("/admin/reload", json={}, headers=auth)
    assert reload.status_code == 200 and reload.json()["model_version"]
    assert secured.post("/admin/reload", json={"bundle": "/no/such/dir"}, headers=auth).status_code == 422
    assert secured.post("/recommend", json={"user_id": "h", "k": 3}, headers=auth).status_code == 200


def test_refuses_public_host_without_token(run_and_bundle, monkeypatch):
    from serving.__main__ import main

    monkeypatch.delenv("TWOTOWER_API_TOKEN", raising=False)
    with pytest.raises(SystemExit):
        main(["--bundle", str(run_and_bundle[1]), "--host", "0.0.0.0"])


def test_adaptation_check_reports_each_step(run_and_bundle):
    from twotower.benchmarks.adaptation import adaptation_check, items_by_category

    rec = Recommender.load(run_and_bundle[1])
    first, second = sorted(items_by_category(rec), key=lambda c: -len(items_by_category(rec)[c]))[:2]
    result = adaptation_check(rec, [first, second], clicks=3, k=5)
    assert [s["category"] for s in result["steps"]] == [None, first, second]
    assert result["steps"][1]["source"] == "model" and len(result["steps"][2]["top"]) == 5
    members = items_by_category(rec)
    for s in result["steps"]:  # the counts are of the top-5 shown
        assert s["in_category"] == {c: sum(i in members[c] for i in s["top"]) for c in (first, second)}
    counts = [s["in_category"] for s in result["steps"]]
    assert counts[1][first] > counts[0][first] and counts[2][second] > counts[1][second]  # clicks pull


def test_an_empty_event_type_and_lone_surrogates_are_refused_by_field(live):
    item = live.recommender.item_ids[0]
    bad = [ev("u", item, event=""), ev("s\ud800", item), ev("u", "i\udfff"),
           ev("u", item, event="click\ud800"), ev("", item)]  # fmt: skip
    with pytest.raises(EventsRejected) as info:
        live.ingest([ev("u", item)] + bad)
    assert [(e.index, e.field) for e in info.value.errors] == [
        (1, "event"), (2, "user_id"), (3, "item_id"), (4, "event"), (5, "user_id")]  # fmt: skip
    assert live.user_events("u") == []
    assert live.ingest([ev("u", item, event=None)]) == 1 and live.user_events("u")[0]["event"] == "<other>"


def test_a_lone_surrogate_user_id_is_hashed_or_refused_never_sent_to_sqlite(run_and_bundle, live):
    with pytest.raises(ValueError, match="user_id"):
        live.user_key("s\ud800")  # raw ids: it could not be stored
    hashed = LiveService(live.recommender, live.store, pseudonym_key="k")
    assert len(hashed.user_key("s\ud800")) == 64 and hashed.stored_history("s\ud800") is None


def test_events_older_than_the_users_window_are_acknowledged_as_trimmed(live):
    items, now = live.recommender.item_ids, time.time()
    window = live.store.max_events
    live.ingest([ev("busy", items[i % 10], ts=now - 1000 + i) for i in range(window)])
    done = live.ingest_report([ev("busy", items[11], ts=now - 5000), ev("busy", items[12], ts=now)])
    assert (done.accepted, done.trimmed) == (1, 1)
    stored = live.user_events("busy")
    assert len(stored) == window and items[11] not in {e["item_id"] for e in stored}


def test_an_id_with_a_slash_is_stored_read_and_erased(live):
    live.ingest([ev("team/alice", live.recommender.item_ids[0])])
    assert len(live.user_events("team/alice")) == 1 and live.user_events("team") == []
    assert live.erase("team/alice") == 1 and live.user_events("team/alice") == []


def test_a_refused_write_makes_the_service_not_writable_until_a_write_succeeds(live):
    assert live.writable and live.probe_writable()
    live.store.db.execute("PRAGMA query_only=ON")
    with pytest.raises(StoreUnavailable):
        live.ingest([ev("u", live.recommender.item_ids[0])])
    assert not live.writable and not live.probe_writable()
    assert live.recommend(user_id=next(iter(live.recommender.histories)), k=3).source == "model"  # reads work
    live.store.db.execute("PRAGMA query_only=OFF")
    assert live.probe_writable() and live.writable


def test_a_read_racing_an_ingest_never_caches_an_event_twice(live):
    """A read that takes the version before an ingest commits and the rows after it must not be cached under
    that version: the ingest would extend it with the event it already holds (forced interleaving)."""
    items, now, store = live.recommender.item_ids, time.time(), live.store
    live.ingest([ev("u", items[1], ts=now - 100), ev("u", items[2], ts=now - 90)])
    live.recommend(user_id="u", k=3)  # cached
    version_read, committed = threading.Event(), threading.Event()
    real_version, real_columns, real_append = store.version, store.history_columns, store.append_tracked

    def version(key):  # the reader's version read lets the writer commit
        found = real_version(key)
        version_read.set()
        return found

    def columns(key):  # the reader reads the rows after the commit
        assert committed.wait(10)
        return real_columns(key)

    def append(events):  # the writer finishes its cache update after the reader's
        assert version_read.wait(10)
        out = real_append(events)
        committed.set()
        reader.join(10)
        return out

    store.version, store.history_columns, store.append_tracked = version, columns, append
    live._cache.clear()  # evicted: the reader goes to the store
    reader = threading.Thread(target=live.stored_history, args=("u",))
    reader.start()
    try:
        live.ingest([ev("u", items[3], ts=now - 80)])
    finally:
        store.version, store.history_columns, store.append_tracked = real_version, real_columns, real_append
    served = live.stored_history("u")
    assert served.n_events == 3 and served.history.rows.tolist() == [1, 2, 3]
    live._cache.clear()
    assert live.stored_history("u").history.rows.tolist() == [1, 2, 3]


@pytest.mark.parametrize("window", ["short", "model", "model+1"])
def test_cached_extension_equals_a_re_read_for_any_window(live, tmp_path, window):
    """The in-place extension of a cached history equals a re-read, also when the store keeps no more than the
    model's window (the first kept event's predecessor is gone: its gap is unknown)."""
    rec = live.recommender
    max_events = {"short": 4, "model": rec.max_len, "model+1": rec.max_len + 1}[window]
    service = LiveService(rec, SQLiteHistoryStore(tmp_path / window, max_events=max_events))
    items, start = rec.item_ids, time.time() - 10_000
    service.ingest([ev("w", items[i], event="click", ts=start + 60 * i) for i in range(max_events)])
    service.stored_history("w")  # cached, at the bound
    for step, size in enumerate((1, 2, 1, max_events + 2, 1)):  # the 4th batch alone is over the bound
        t = start + 5000 + 1000 * step
        service.ingest([ev("w", items[(5 + step + j) % 30], dwell=5.0, ts=t + 30 * j) for j in range(size)])
        cached = service.stored_history("w")
        service._cache.clear()
        reread = service.stored_history("w")
        assert cached.n_events == reread.n_events == max_events and cached.last_ts == reread.last_ts
        for name, array in cached.history.feeds(rec.max_len).items():
            np.testing.assert_array_equal(array, reread.history.feeds(rec.max_len)[name], err_msg=name)


def test_an_event_with_both_an_item_and_a_query_is_refused_naming_the_query(live, secured):
    item = live.recommender.item_ids[0]
    with pytest.raises(EventsRejected) as info:
        live.ingest([ev("u", item), {**ev("u", item), "query": "horror night"}])
    assert [(e.index, e.field) for e in info.value.errors] == [(1, "query")] and live.user_events("u") == []
    auth = {"Authorization": "Bearer t0ken"}
    body = {"events": [{"user_id": "h", "item_id": item, "query": "horror night"}]}
    bad = secured.post("/events", json=body, headers=auth)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "events", 0, "query"]
    assert secured.get("/users/h/history", headers=auth).json()["events"] == []


def test_events_on_a_removed_added_item_are_accepted_as_on_a_removed_bundle_item(run_and_bundle, live):
    """Both kinds of taken-down item keep accepting events (a page shown before the removal), on this process
    and after a restart; neither is answered, and the history does not report them as unknown."""
    rec = live.recommender
    category = rec.bundle.categories[1]
    live.add_items([("fresh", [category])])
    live.remove_items(["fresh", rec.item_ids[0]])
    assert live.ingest([ev("late", "fresh"), ev("late", rec.item_ids[0]), ev("late", rec.item_ids[1])]) == 3
    answer = live.recommend(user_id="late", k=50)
    assert answer.unknown_items == [] and not {"fresh", rec.item_ids[0]} & {
        x["item_id"] for x in answer.items
    }
    with pytest.raises(EventsRejected):
        live.ingest([ev("late", "never-added")])
    again = LiveService(Recommender.load(run_and_bundle[1]), live.store)  # a restart replays the changes
    from serving.live import apply_catalog_changes

    apply_catalog_changes(again.recommender, live.store)
    assert again.ingest([ev("later", "fresh")]) == 1 and "fresh" not in again.recommender.catalog
    assert again.recommend(user_id="late", k=5).unknown_items == []


def test_a_reload_skips_added_items_the_new_bundle_cannot_take(run_and_bundle, live, caplog):
    """A live item with categories the next bundle lacks is skipped (named in a warning), not a reason to refuse
    the bundle; it stays stored for a later bundle. A restored bundle item is recorded with its own categories."""
    rec = live.recommender
    names = rec.bundle.categories
    live.store.record_items(
        [("from-old-bundle", "add", ["a category of another bundle"])]
    )  # an older state dir
    live.add_items([("ok", [names[1]])])
    restored = rec.item_ids[2]
    live.remove_items([restored])
    own = [str(c) for c in rec.bundle.items["categories"].iloc[2]]
    other = next(n for n in names[1:] if n not in own)
    assert live.add_items([(restored, [other])]) == [
        restored
    ]  # restored: the request's categories are unused
    assert {i: (a, c) for i, a, c in live.store.catalog_changes()}[restored] == ("add", own)
    with caplog.at_level("WARNING", logger="serving.catalog_replay"):
        fresh = live.reload(run_and_bundle[1])
    assert live.replayed.skipped == ("from-old-bundle",) and live.replayed.added == 1
    assert "from-old-bundle" in caplog.text and "1 added item(s) not replayed" in caplog.text
    assert "ok" in fresh.catalog and restored in fresh.catalog and "from-old-bundle" not in fresh.catalog
    assert live.ingest([ev("u", "from-old-bundle")]) == 1  # known, as a taken-down item is
    assert [i for i, *_ in live.store.catalog_changes()].count(
        "from-old-bundle"
    ) == 1  # kept for a later bundle
