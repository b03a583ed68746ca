"""Erasure that erases: pseudonyms by default, an erased user's bytes gone from every file of the state dir,
an erasure log without raw ids and pruned by retention, and a store of raw ids re-keyed once."""

from __future__ import annotations

import stat
import struct
import threading
import time
from pathlib import Path

import pytest

from serving.app import open_live_service
from serving.batch_job import load_users
from serving.core.request import RecommendationRequest
from serving.historystore import StoredEvent, seed_rows
from serving.live import LiveService
from serving.privacy import KEY_FILE, erasure_key, key_scheme, pseudonym_key
from serving.recommender import Recommender
from serving.settings import Settings
from serving.store import SQLiteHistoryStore, StoreUnavailable

USER = "erase-me-7f3a9c@example.org"
DWELL, AGO = 1234.5678, 12345.678  # distinctive floats: SQLite stores a REAL as 8 big-endian bytes


def found_in_state(state: Path, *needles: bytes) -> dict[bytes, list[str]]:
    """Which needles occur in the raw bytes of which files of the state dir (database, -wal, -shm, key)."""
    files = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    return {n: [name for name, data in files.items() if n in data] for n in needles}


def open_service(run_and_bundle, state: Path, **settings) -> LiveService:
    return open_live_service(Settings(bundle=str(run_and_bundle[1]), state_dir=str(state), **settings))


def post_and_erase(live: LiveService, state: Path) -> tuple[dict, dict]:
    """Events of USER with distinctive values; what the files hold before and after the erasure."""
    items = live.recommender.item_ids[:4]
    now = time.time()
    live.ingest([{"user_id": USER, "item_id": i, "event": "click", "dwell_s": DWELL, "ts": now - AGO + j}
                 for j, i in enumerate(items)])  # fmt: skip
    needles = (
        USER.encode(),
        live.user_key(USER).encode(),
        struct.pack(">d", DWELL),
        struct.pack(">d", now - AGO),
    )
    before = found_in_state(state, *needles)
    assert live.erase(USER) == 4 and live.user_events(USER) == []
    return before, found_in_state(state, *needles)


def test_erasure_leaves_no_byte_of_a_pseudonymised_user_in_any_file(run_and_bundle, tmp_path):
    state = tmp_path / "state"
    live = open_service(run_and_bundle, state)  # pseudonymised by default
    before, after = post_and_erase(live, state)
    raw, key, dwell, ts = before
    assert not before[raw] and before[key] and before[dwell] and before[ts]  # the scan can see them
    assert after == {raw: [], key: [], dwell: [], ts: []}
    assert live.store.erased_since(0) == [erasure_key(live.user_key(USER))]  # a hash of the pseudonym


def test_erasure_with_pseudonymisation_off_leaves_no_raw_id_not_even_in_the_erasure_log(
    run_and_bundle, tmp_path
):
    state = tmp_path / "state"
    live = open_service(run_and_bundle, state, pseudonym_key="off")
    before, after = post_and_erase(live, state)
    assert before[USER.encode()] and after[USER.encode()] == []
    assert not (state / KEY_FILE).exists()
    assert live.store.erased_since(0) == [erasure_key(USER)] != [USER]


# ---- the key ----------------------------------------------------------------------------------------------
def test_a_key_is_created_once_owner_only_and_reused(tmp_path):
    keys = []
    threads = [threading.Thread(target=lambda: keys.append(pseudonym_key(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 64  # racing first starts agree on one key
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert pseudonym_key(tmp_path) == keys[0] and [p.name for p in tmp_path.iterdir()] == [KEY_FILE]
    assert pseudonym_key(tmp_path, "configured") == b"configured"
    assert pseudonym_key(tmp_path, "OFF") is None
    assert pseudonym_key(tmp_path / "fresh", create=False) is None and not (tmp_path / "fresh").exists()


def test_a_restart_reads_the_same_pseudonyms_and_seeds_no_raw_id(run_and_bundle, tmp_path):
    state = tmp_path / "state"
    first = open_service(run_and_bundle, state)
    user = next(iter(first.recommender.histories))
    first.ingest([{"user_id": "returning", "item_id": first.recommender.item_ids[0]}])
    keys = [r[0] for r in first.store.db.execute("SELECT user_key FROM users")]
    assert user not in keys and all(len(k) == 64 for k in keys)  # the bundle's ids were seeded as pseudonyms
    first.store.close()
    again = open_service(run_and_bundle, state)
    assert again.user_key(user) == first.user_key(user) and len(again.user_events(user)) > 0
    assert [e["item_id"] for e in again.user_events("returning")] == [first.recommender.item_ids[0]]


def test_a_store_is_never_read_with_another_key(run_and_bundle, tmp_path):
    state = tmp_path / "state"
    open_service(run_and_bundle, state).store.close()
    for other in ("another-key", "off"):
        with pytest.raises(StoreUnavailable, match="TWOTOWER_PSEUDONYM_KEY"):
            open_service(run_and_bundle, state, pseudonym_key=other)


def test_a_store_of_raw_ids_is_re_keyed_once_and_the_raw_ids_leave_its_files(run_and_bundle, tmp_path):
    """A state dir from before pseudonyms were the default: raw ids in events, users and the erasure log."""
    state = tmp_path / "state"
    old = SQLiteHistoryStore(state, max_events=50)
    item = Recommender.load(run_and_bundle[1]).item_ids[0]
    old.append([("legacy-user-4d2e", StoredEvent(item, "click", None, 1.0))])
    old.db.execute(
        "INSERT INTO erasures VALUES ('erased-legacy-user', ?, 1)", (time.time(),)
    )  # as the old erase logged it
    old.close()
    live = open_service(run_and_bundle, state, seed_histories=False)
    assert [e["item_id"] for e in live.user_events("legacy-user-4d2e")] == [item]
    assert live.store.erased_since(0) == [erasure_key("erased-legacy-user")]
    assert found_in_state(state, b"legacy-user-4d2e", b"erased-legacy-user") == {
        b"legacy-user-4d2e": [], b"erased-legacy-user": []}  # fmt: skip
    assert live.store.key_scheme == key_scheme(pseudonym_key(state))


def test_batch_scoring_finds_pseudonymised_histories_by_user_id(run_and_bundle, tmp_path):
    state = tmp_path / "state"
    live = open_service(run_and_bundle, state, seed_histories=False)
    rec = live.recommender
    live.ingest([{"user_id": "batch-user", "item_id": i} for i in rec.item_ids[:3]])
    live.store.close()
    (tmp_path / "users.txt").write_text("batch-user\nnobody\n")
    users, histories = load_users(rec, users_file=str(tmp_path / "users.txt"), state_dir=str(state))
    assert users == ["batch-user", "nobody"] and [len(h.rows) for h in histories] == [3, 0]


def test_an_erased_users_profile_is_not_used_before_the_retrain(signal_bundle, tmp_path):
    """The bundle's users table still holds an erased user's profile until a retrain: it is not read for
    them, so the next answer is the anonymous fallback, and a returning user starts without it."""
    rec = Recommender.load(signal_bundle[1])
    live = LiveService(rec, SQLiteHistoryStore(tmp_path / "state", max_events=rec.max_len + 1), b"k" * 32)
    live.store.seed(((live.user_key(u), e) for u, e in seed_rows(rec)), source="test")  # as the app does
    user, other = [u for u in sorted(rec.user_features) if u in rec.histories][:2]

    def with_profile(uid: str, profile: bool):
        request = RecommendationRequest(user_id=uid, k=5)
        return rec.recommend_resolved(live.stored_history(uid), request, profile=profile)

    assert live.recommend(user_id=other, k=5).items == with_profile(other, True).items  # profiles are read
    assert live.erase(user) > 0
    after, anonymous = live.recommend(user_id=user, k=5), live.recommend(user_id="never-seen", k=5)
    assert after.source == anonymous.source == "popularity" and after.items == anonymous.items
    assert rec.recommend_resolved(None, RecommendationRequest(user_id=user, k=5), profile=True).source == (
        "features"  # what the stored profile alone would have answered
    )
    live.ingest([{"user_id": user, "item_id": rec.item_ids[3]}])  # they come back
    back = live.recommend(user_id=user, k=5)
    assert back.source == "model" and back.items == with_profile(user, False).items
    assert back.items != with_profile(user, True).items  # the profile would have moved the list
    assert live.recommend(user_id=other, k=5).items == with_profile(other, True).items  # others keep theirs
    asked = []
    live.store.is_erased = lambda key: asked.append(key) or type(live.store).is_erased(live.store, key)
    for _ in range(3):  # the answer is remembered per store version: one log read for unchanged histories
        live.recommend(user_id=other, k=5)
    assert len(asked) <= 1
    before = len(asked)
    replica = LiveService(rec, live.store, b"k" * 32)  # another process erases `other`
    replica.erase(other)
    after_other = live.recommend(user_id=other, k=5)
    assert after_other.source == "popularity" and len(asked) == before + 1  # the version moved: read again
