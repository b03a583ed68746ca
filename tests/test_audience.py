"""Audiences for campaigns: the exact user index against brute force, exclude-seen, erasure, keyed ids, access,
bad input, the Parquet file and the command (serving/audience.py, audience_live.py, audience_routes.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.audience import UnknownItems, UserIndex, write_audiences
from serving.audience_live import LiveAudiences
from serving.batch_job import without_erased
from serving.privacy import pseudonym_key, user_key
from serving.settings import Settings
from serving.store import SQLiteHistoryStore
from twotower.config import PROJECT_ROOT

TOKEN, READ_TOKEN, WRITE_TOKEN = "t-all-0123456789", "t-read-0123456789", "t-write-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def index(rec):
    users = sorted(rec.histories)
    return UserIndex.build(rec, users, [rec.histories[u] for u in users], batch=16)


def brute_force(rec, index: UserIndex, item: str, k: int, exclude_seen: bool = True):
    """The reference: every user's vector encoded one by one (the online path), scored, sorted."""
    row = rec.catalog.row_of[item]
    users = [u for u in sorted(rec.histories) if len(rec.histories[u])]
    vectors = np.stack([rec.encode(rec.histories[u]) for u in users])  # (U, D)
    scores = vectors @ rec.vectors[row]  # (U,)
    ok = [i for i, u in enumerate(users) if not (exclude_seen and row in rec.histories[u].rows)]
    order = sorted(ok, key=lambda i: -scores[i])[:k]
    return [users[i] for i in order], scores[order]


def test_the_index_ranks_as_brute_force_over_every_user(rec, index):
    assert len(index) == sum(1 for h in rec.histories.values() if len(h))
    for item in rec.item_ids[:8]:
        for exclude in (True, False):
            (found,) = index.audiences([item], 10, exclude_seen=exclude)
            users, scores = brute_force(rec, index, item, 10, exclude)
            np.testing.assert_allclose(found.scores, scores, rtol=1e-5, atol=1e-5)
            assert found.user_ids == users, (item, exclude)


def test_exclude_seen_leaves_out_exactly_the_users_who_had_the_item(rec, index):
    item = rec.item_ids[int(np.argmax(rec.popularity))]  # the most popular: many users have it
    row = rec.catalog.row_of[item]
    seen = {u for u, h in rec.histories.items() if row in h.rows}
    assert seen
    (everyone,) = index.audiences([item], len(index), exclude_seen=False)
    (unseen,) = index.audiences([item], len(index))
    assert set(everyone.user_ids) - set(unseen.user_ids) == seen
    assert [u for u in everyone.user_ids if u not in seen] == unseen.user_ids  # the order is kept


def test_a_set_of_items_gets_one_ranking_each_and_bad_items_are_named(rec, index):
    a, b = rec.item_ids[:2]
    found = index.audiences([a, b, a], 3)
    assert [x.item_id for x in found] == [a, b]  # duplicates answered once
    assert [x.user_ids for x in found] == [
        index.audiences([a], 3)[0].user_ids,
        index.audiences([b], 3)[0].user_ids,
    ]
    with pytest.raises(UnknownItems, match="ghost"):
        index.audiences([a, "ghost"], 3)
    with pytest.raises(ValueError, match="k must be"):
        index.audiences([a], 0)


def test_parquet_file_columns_and_ranks(rec, index, tmp_path):
    items = list(rec.item_ids[:3])
    summary = write_audiences(index, items, 4, tmp_path / "a.parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.column_names == ["item_id", "rank", "user_id", "score"]
    frame = table.to_pandas()
    assert summary["rows"] == len(frame) == 12 and list(frame["item_id"].unique()) == items
    assert frame.groupby("item_id")["rank"].apply(list).tolist() == [[1, 2, 3, 4]] * 3
    assert (frame.groupby("item_id")["score"].diff().dropna() <= 0).all()
    assert table.schema.metadata[b"twotower.model_version"] == rec.model_version.encode()


def test_erased_users_are_left_out_of_offline_audiences(rec, run_and_bundle, tmp_path):
    users = sorted(rec.histories)[:5]
    store = SQLiteHistoryStore(tmp_path / "state", max_events=10)
    key = pseudonym_key(tmp_path / "state")  # the service's key file
    store.erase(user_key(key, users[1]))
    kept, histories = without_erased(users, [rec.histories[u] for u in users], str(tmp_path / "state"))
    assert kept == users[:1] + users[2:] and len(histories) == 4


def test_the_command_writes_the_audiences(run_and_bundle, rec, tmp_path):
    items = list(rec.item_ids[:2])
    out = tmp_path / "aud.parquet"
    proc = subprocess.run(
        [sys.executable, "scripts/audience.py", f"bundle={run_and_bundle[1]}", f"items=[{','.join(items)}]", "k=5",
         f"out={out}", "threads=1"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    frame = pq.read_table(out).to_pandas()
    assert list(frame.columns) == ["item_id", "rank", "user_id", "score"] and len(frame) == 10
    users = sorted(rec.histories)
    reference = UserIndex.build(rec, users, [rec.histories[u] for u in users]).audiences(items, 5)
    assert frame["user_id"].tolist() == [u for a in reference for u in a.user_ids]
    bad = subprocess.run([sys.executable, "scripts/audience.py", f"bundle={run_and_bundle[1]}", "items=[ghost]",
                          f"out={tmp_path / 'b.parquet'}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "ghost" in bad.stderr


# ---- the service --------------------------------------------------------------------------------------------
def service(run_and_bundle, state, **settings):
    settings = Settings(bundle=str(run_and_bundle[1]), state_dir=str(state), api_token=TOKEN, read_token=READ_TOKEN,
                        write_token=WRITE_TOKEN, **settings)  # fmt: skip
    return TestClient(create_app(settings), raise_server_exceptions=False)


def stored_index(client, rec) -> UserIndex:
    """The reference: the store's users (seeded with the bundle's), their histories as /recommend reads them."""
    live, users = client.app.state.live, sorted(rec.histories)
    return UserIndex.build(live.recommender, users, [live.stored_history(u) for u in users])


@pytest.fixture
def raw_ids(run_and_bundle, tmp_path):
    with service(run_and_bundle, tmp_path / "state", pseudonym_key="off") as client:
        yield client


def test_the_endpoint_needs_a_read_token(raw_ids, rec):
    body = {"items": [rec.item_ids[0]], "k": 3}
    assert raw_ids.post("/audiences", json=body).status_code == 401
    assert raw_ids.post("/audiences", json=body, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert (
        raw_ids.post("/audiences", json=body, headers={"Authorization": f"Bearer {WRITE_TOKEN}"}).status_code
        == 403
    )
    assert (
        raw_ids.post("/audiences", json=body, headers={"Authorization": f"Bearer {READ_TOKEN}"}).status_code
        == 200
    )


def test_the_endpoint_answers_as_the_library_over_the_stored_users(raw_ids, rec):
    items = list(rec.item_ids[:3])
    answer = raw_ids.post("/audiences", json={"items": items, "k": 7}, headers=AUTH).json()
    live = raw_ids.app.state.live
    users = sorted(rec.histories)  # the store was seeded with the bundle's users
    stored = UserIndex.build(
        live.recommender, users, [live.stored_history(u) for u in users]
    )  # as /recommend reads them
    assert answer["user_ids"] == "raw" and answer["users_indexed"] == len(stored)
    assert [a["item_id"] for a in answer["audiences"]] == items
    for got, want in zip(answer["audiences"], stored.audiences(items, 7), strict=True):
        assert [u["user_id"] for u in got["users"]] == want.user_ids
        assert [u["rank"] for u in got["users"]] == list(range(1, 8))
        np.testing.assert_allclose([u["score"] for u in got["users"]], want.scores, rtol=1e-5, atol=1e-5)


def test_an_erased_user_never_appears_and_a_new_interaction_counts_at_once(raw_ids, rec):
    item = rec.item_ids[0]
    ask = lambda: raw_ids.post("/audiences", json={"items": [item], "k": 5}, headers=AUTH).json()  # noqa: E731
    first = [u["user_id"] for u in ask()["audiences"][0]["users"]]
    assert raw_ids.delete(f"/users/{first[0]}", headers=AUTH).status_code == 200
    assert raw_ids.post("/events", json={"events": [{"user_id": first[1], "item_id": item}]},
                        headers=AUTH).status_code == 200  # fmt: skip
    again = ask()
    second = [u["user_id"] for u in again["audiences"][0]["users"]]
    assert first[0] not in second  # erased (the index was built before: the store check drops them)
    assert first[1] not in second  # has now seen the item
    assert second[:3] == first[2:5] and len(second) == 5
    assert again["users_indexed"] == len(rec.histories)  # answered from the same index, not rebuilt


def test_a_stale_index_is_rebuilt_in_the_background_with_new_users(raw_ids, rec):
    raw_ids.app.state.audiences = LiveAudiences(refresh_s=0.0)
    body = {"items": [rec.item_ids[0]], "k": 3}
    before = raw_ids.post("/audiences", json=body, headers=AUTH).json()["users_indexed"]
    events = [{"user_id": "newcomer", "item_id": i} for i in rec.item_ids[1:4]]
    assert raw_ids.post("/events", json={"events": events}, headers=AUTH).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the first request after the write starts the rebuild
        if raw_ids.post("/audiences", json=body, headers=AUTH).json()["users_indexed"] == before + 1:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the index was not rebuilt with the new user")


def test_keyed_ids_under_pseudonymisation(run_and_bundle, rec, tmp_path):
    with service(run_and_bundle, tmp_path / "state") as client:
        answer = client.post("/audiences", json={"items": [rec.item_ids[0]], "k": 5}, headers=AUTH).json()
        index = stored_index(client, rec)
    assert answer["user_ids"] == "keyed"
    got = [u["user_id"] for u in answer["audiences"][0]["users"]]
    assert all(re.fullmatch(r"[0-9a-f]{64}", u) for u in got) and not set(got) & set(rec.histories)
    key = pseudonym_key(tmp_path / "state", create=False)
    (want,) = index.audiences([rec.item_ids[0]], 5)
    assert got == [user_key(key, u) for u in want.user_ids]  # the operator with the key can map them


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [], "k": 3}, "items"),
        ({"items": ["1"] * 21, "k": 3}, "items"),
        ({"items": ["1"], "k": 0}, "k"),
        ({"items": ["1"], "k": 1001}, "k"),
        ({"items": ["1"], "k": "3"}, "k"),
        ({"items": ["1"], "exclude_seen": "yes"}, "exclude_seen"),
        ({"items": ["1"], "users": 3}, "users"),
        ({"k": 3}, "items"),
    ],
)
def test_bad_input_is_422_naming_the_field(raw_ids, body, field):
    response = raw_ids.post("/audiences", json=body, headers=AUTH)
    assert response.status_code == 422
    assert any(field in error["loc"] for error in response.json()["detail"])


def test_unknown_or_removed_items_are_404_naming_them(raw_ids, rec):
    response = raw_ids.post("/audiences", json={"items": [rec.item_ids[0], "ghost"]}, headers=AUTH)
    assert response.status_code == 404 and "ghost" in response.json()["detail"]
    gone = rec.item_ids[1]
    assert raw_ids.delete(f"/items/{gone}", headers=AUTH).status_code == 200
    response = raw_ids.post("/audiences", json={"items": [gone]}, headers=AUTH)
    assert response.status_code == 404 and gone in response.json()["detail"]


def test_an_item_added_live_gets_an_audience(raw_ids, rec):
    category = rec.bundle.categories[1]
    assert raw_ids.post("/items", json={"items": [{"item_id": "fresh", "categories": [category]}]},
                        headers=AUTH).status_code == 200  # fmt: skip
    answer = raw_ids.post("/audiences", json={"items": ["fresh"], "k": 4}, headers=AUTH).json()
    assert len(answer["audiences"][0]["users"]) == 4


def test_audience_quality_on_a_run_counts_every_target(run_and_bundle):
    from twotower.benchmarks.audience import audience_quality, format_table

    result = audience_quality(run_and_bundle[0], bundle=run_and_bundle[1], ns=(5, 1000), threads=1)
    assert result["targets"] == result["users"] > 0 and result["targets_already_seen"] >= 0
    share = 1 - result["targets_already_seen"] / result["targets"]  # a seen target is never in an audience
    for name in ("model", "activity", "random"):
        row = result["results"][name]
        assert 0 <= row["recall@5"] <= row["recall@1000"] <= 1
        assert row["micro_recall@1000"] == pytest.approx(
            share
        )  # an audience of everyone finds every unseen one
    assert set(result["model_over_activity"]) == {"recall@5", "recall@1000"} and "model" in format_table(
        result
    )


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not on PATH")
def test_the_live_index_over_a_redis_store(rec, tmp_path):
    pytest.importorskip("redis")
    from serving.historystore import seed_rows
    from serving.live import LiveService
    from serving.redisstore import RedisHistoryStore
    from twotower.benchmarks.servers import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        store = RedisHistoryStore(server.url, max_events=rec.max_len + 1, rewrite_on_erase=False)
        live = LiveService(rec, store)  # raw ids
        store.seed(((u, e) for u, e in seed_rows(rec)), source="test")
        holder, item = LiveAudiences(refresh_s=3600), rec.item_ids[0]
        index, (first,) = holder.audiences(live, [item], 5)
        assert sorted(index.user_ids) == sorted(u for u, h in rec.histories.items() if len(h))
        live.erase(first.user_ids[0])
        _, (again,) = holder.audiences(live, [item], 5)
        assert first.user_ids[0] not in again.user_ids and again.user_ids[:4] == first.user_ids[1:]
        store.close()
