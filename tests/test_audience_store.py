"""The live audience index against its store (serving/audience_live.py): SQLite's bulk read equals the
per-user read (stored searches included), a user erased and back is encoded without their stored profile, and
a store that cannot be read is StoreUnavailable (503), for SQLite and Redis alike."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.audience_live import LiveAudiences, _bulk_columns, build_from_store
from serving.batch import BatchScorer
from serving.historystore import seed_rows
from serving.live import LiveService
from serving.recommender import Recommender
from serving.settings import Settings
from serving.store import SQLiteHistoryStore, StoreUnavailable

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server not on PATH (apt-get install -y redis-server; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def signal_rec(signal_bundle) -> Recommender:
    """A bundle that reads searches and user features."""
    return Recommender.load(signal_bundle[1])


def seeded(rec: Recommender, state, key: bytes | None = b"k" * 32) -> LiveService:
    """A pseudonymised SQLite-backed service seeded with the bundle's histories."""
    store = SQLiteHistoryStore(state, max_events=rec.max_len + 1)
    live = LiveService(rec, store, pseudonym_key=key)
    store.seed(((live.user_key(u), e) for u, e in seed_rows(rec)), source="test")
    return live


def test_the_bulk_build_reads_stored_searches_as_the_per_user_path(signal_rec, tmp_path):
    rec, now = signal_rec, time.time()
    live = seeded(rec, tmp_path / "state")
    users = sorted(rec.histories)[:10] + ["newcomer"]
    events = []
    for i, user in enumerate(users):
        events += [{"user_id": user, "item_id": rec.item_ids[i], "ts": now - 60 + i},
                   {"user_id": user, "query": f"space opera galaxy {i}", "ts": now - 30 + i}]  # fmt: skip
    live.ingest(events)
    index = build_from_store(live)
    keys = list(index.user_ids)
    per_user = {k: live.store.history_columns(k) for k in keys}
    assert _bulk_columns(live.store, set(keys)) == per_user  # the same rows, searches as {"query": text}
    searching = [k for k in keys if any(isinstance(x, dict) for x in per_user[k][0])]
    assert {live.user_key(u) for u in users} <= set(searching)
    resolved = [rec.resolve(*per_user[k]).history for k in searching]
    want = BatchScorer(rec).encode(resolved, features=[index.features.get(k) for k in searching])  # (S, D)
    got = index.vectors[[index.position[k] for k in searching]]  # (S, D)
    np.testing.assert_allclose(got, want, atol=1e-6)


def profiled_and_blind(rec: Recommender, live: LiveService, user: str) -> tuple[np.ndarray, np.ndarray]:
    """The user's current vector with their stored profile and without it (as /recommend encodes them)."""
    history = live.stored_history(user).history
    profiled = BatchScorer(rec).encode([history], features=[rec.user_features[user]])[0]  # (D,)
    blind = BatchScorer(rec).encode([history])[0]  # (D,): every feature unknown
    assert np.abs(profiled - blind).max() > 1e-4  # the profile moves the vector
    return profiled, blind


def come_back(live: LiveService, rec: Recommender, user: str) -> None:
    now = time.time()
    live.ingest([{"user_id": user, "item_id": rec.item_ids[i], "ts": now - 10 + i} for i in range(3)])


def test_a_user_erased_and_back_is_indexed_without_their_stored_profile(signal_rec, tmp_path):
    rec = signal_rec
    live = seeded(rec, tmp_path / "state")
    user, other = [u for u in sorted(rec.histories) if u in rec.user_features][:2]
    live.erase(user)
    come_back(live, rec, user)
    index = build_from_store(live)
    key = live.user_key(user)
    assert key not in index.features and live.user_key(other) in index.features
    _, blind = profiled_and_blind(rec, live, user)
    np.testing.assert_allclose(index.vectors[index.position[key]], blind, atol=1e-6)


def test_a_user_erased_and_back_after_the_build_is_rescored_without_their_profile(signal_rec, tmp_path):
    rec = signal_rec
    live = seeded(rec, tmp_path / "state")
    holder, item = LiveAudiences(refresh_s=3600), rec.item_ids[0]
    index, _ = holder.audiences(live, [item], 5, exclude_seen=False)
    user = next(u for u in sorted(rec.histories) if u in rec.user_features)
    assert live.user_key(user) in index.features  # built while the profile was in use
    live.erase(user)
    come_back(live, rec, user)
    again, (audience,) = holder.audiences(live, [item], len(index), exclude_seen=False)
    assert again is index  # the same index: the user was re-encoded by the check
    _, blind = profiled_and_blind(rec, live, user)
    score = audience.scores[audience.user_ids.index(live.user_key(user))]
    assert score == pytest.approx(float(blind @ index.queries([item])[0].vector), abs=1e-5)


def test_a_sqlite_store_that_cannot_be_read_is_store_unavailable(rec, tmp_path):
    live = seeded(rec, tmp_path / "state", key=None)
    holder, item = LiveAudiences(refresh_s=3600), rec.item_ids[0]
    holder.audiences(live, [item], 3)
    store = live.store
    store._checkpoint()  # every row in the file, none in the WAL
    page = store.db.execute("PRAGMA page_size").fetchone()[0]
    store.close()  # the next read opens the file anew: no page cached
    with open(store.path, "r+b") as file:  # every page but the first (the schema) overwritten
        size = file.seek(0, 2)
        file.seek(page)
        file.write(b"\xa5" * (size - page))
    for fresh in (holder, LiveAudiences()):  # the check of a built index, and a build
        with pytest.raises(StoreUnavailable, match="cannot be read") as info:
            fresh.audiences(live, [item], 3)
        assert info.value.operation == "read" and str(store.path) in str(info.value)
    user = next(iter(rec.histories))
    for read in (store.history, store.history_columns, store.version, store.is_erased):  # /recommend's reads
        with pytest.raises(StoreUnavailable, match="cannot be read"):
            read(user)


@needs_redis
def test_audiences_answer_503_while_redis_is_down_and_200_once_it_is_back(run_and_bundle, rec, tmp_path):
    pytest.importorskip("redis", reason="the redis client is not installed (pip install -e '.[serve]')")
    from twotower.benchmarks.servers import RedisServer

    body = {"items": [rec.item_ids[0]], "k": 3}
    with RedisServer(tmp_path / "redis") as server:
        settings = Settings(bundle=str(run_and_bundle[1]), state_dir=str(tmp_path / "state"), store=server.url,
                            pseudonym_key="off")  # fmt: skip
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            assert client.post("/audiences", json=body).status_code == 200
            server.kill()
            for holder in (client.app.state.audiences, LiveAudiences()):  # the check, then a build
                client.app.state.audiences = holder
                answer = client.post("/audiences", json=body)
                assert answer.status_code == 503, answer.text
                assert "cannot be read" in answer.json()["detail"]
            server.start()
            assert client.post("/audiences", json=body).status_code == 200
