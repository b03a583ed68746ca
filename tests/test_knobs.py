"""The list re-rank's knobs and the explanations through every path: in-process, HTTP, batch scoring."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.batch import BatchScorer
from serving.core.explain import WINDOW, because_similar, leave_one_out_drops
from serving.core.history import History
from serving.core.listsettings import ListSettings
from serving.core.request import RecommendationRequest
from serving.recommender import Recommender
from serving.settings import Settings


@pytest.fixture(scope="module")
def knob_rec(run_and_bundle):
    return Recommender.load(run_and_bundle[1])


def _users(rec: Recommender, n: int = 12) -> list[str]:
    return [u for u, h in rec.histories.items() if len(h.rows) >= 3][:n]


def _categories(rec: Recommender, item_id: str) -> set[int]:
    return set(np.flatnonzero(rec.members[rec.catalog.row_of[item_id]]).tolist())


def test_knobs_off_is_the_plain_answer_and_defaults_apply(knob_rec, run_and_bundle):
    user = _users(knob_rec)[0]
    plain = knob_rec.recommend(user_id=user, k=8)
    off = knob_rec.recommend(user_id=user, k=8, diversity=0.0, max_per_category=0, calibrate=0.0, explore=0.0)
    assert off.items == plain.items and off.ranking is None
    diverse = Recommender.load(run_and_bundle[1], ranking={"diversity": 0.6})
    default = diverse.recommend(user_id=user, k=8)
    assert default.ranking.settings.diversity == 0.6
    assert default.items == knob_rec.recommend(user_id=user, k=8, diversity=0.6).items
    assert (
        diverse.recommend(user_id=user, k=8, diversity=0.0).items == plain.items
    )  # a request switches it off


def test_rerank_false_is_the_models_ranking_alone_whatever_the_defaults(run_and_bundle):
    """``rerank=False``: no session-intent lift and the list knobs off (not the bundle's defaults); the plain
    search over the user's encoded history is its twin. Knobs the request sets still apply."""
    from serving.core.selector import Selector

    rec = Recommender.load(run_and_bundle[1], ranking={"diversity": 0.7, "calibrate": 0.3})
    differs = 0
    for user in _users(rec):
        history = rec.histories[user]
        with Selector(len(rec.item_ids), history.rows) as selector:
            scores, rows = rec.search(rec.encode(history), 8, selector)
        alone = [rec.item_ids[r] for r in rows.tolist()]
        got = rec.recommend(user_id=user, k=8, rerank=False)
        assert [x["item_id"] for x in got.items] == alone and got.ranking is None and got.lift is None
        differs += [x["item_id"] for x in rec.recommend(user_id=user, k=8).items] != alone
        asked = rec.recommend(user_id=user, k=8, rerank=False, diversity=0.7)
        assert asked.ranking is not None and asked.ranking.settings.diversity == 0.7
        assert asked.ranking.settings.calibrate == 0.0  # not the default's: rerank=False started from off
    assert differs > 0  # the defaults do change lists: the check above can fail


def test_diversity_and_cap_change_the_list_within_the_candidates(knob_rec):
    changed = 0
    for user in _users(knob_rec):
        plain = knob_rec.recommend(user_id=user, k=8)
        seen = {knob_rec.item_ids[r] for r in knob_rec.histories[user].rows}
        for knobs in ({"diversity": 0.9}, {"max_per_category": 2}, {"calibrate": 0.8}):
            items = knob_rec.recommend(user_id=user, k=8, **knobs).items
            ids = [x["item_id"] for x in items]
            assert len(set(ids)) == len(ids) and not seen & set(ids)
            changed += ids != [x["item_id"] for x in plain.items]
        capped = knob_rec.recommend(user_id=user, k=8, max_per_category=2).items
        counts: dict[int, int] = {}
        for item in capped:
            for c in _categories(knob_rec, item["item_id"]):
                counts[c] = counts.get(c, 0) + 1
        assert max(counts.values()) <= 2
    assert changed > 0


def test_exploration_is_reproducible_and_marked(knob_rec):
    user = _users(knob_rec)[1]
    first = knob_rec.recommend(user_id=user, k=10, explore=0.3)
    assert first.items == knob_rec.recommend(user_id=user, k=10, explore=0.3).items  # derived seed: stable
    assert sum(x["explore"] for x in first.items) == 3 and first.ranking.seed is not None
    seeded = {tuple(x["item_id"] for x in knob_rec.recommend(user_id=user, k=10, explore=0.3, seed=s).items)
              for s in range(6)}  # fmt: skip
    assert len(seeded) > 1
    assert (
        knob_rec.recommend(user_id=user, k=10, explore=0.3, seed=4).items
        == knob_rec.recommend(user_id=user, k=10, explore=0.3, seed=4).items
    )


@pytest.mark.parametrize(
    "field, value",
    [("diversity", 1.2), ("calibrate", -0.5), ("explore", 7), ("max_per_category", -1), ("seed", -3)],
)
def test_bad_knobs_are_refused_naming_the_field(knob_rec, field, value):
    with pytest.raises(ValueError, match=field):
        RecommendationRequest(user_id="x", **{field: value})


def test_explanations_name_only_the_users_recent_history(knob_rec):
    for user in _users(knob_rec):
        history = knob_rec.histories[user].rows
        recent = {knob_rec.item_ids[r] for r in history[-WINDOW:]}
        result = knob_rec.recommend(user_id=user, k=10, explain=True, diversity=0.5)
        for item in result.items:
            assert item["because"] and set(item["because"]) <= recent
    fallback = knob_rec.recommend(user_id="nobody-at-all", k=3, explain=True)
    assert fallback.source == "popularity" and all(x["because"] == [] for x in fallback.items)


def test_because_similar_hand_computed():
    vectors = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)  # rows 0..3
    history = np.array([1, 0, 3, 2])  # row 2 has the same vector as row 0 and is more recent
    named = because_similar(np.array([[1, 0], [0, 1]], np.float32), history, vectors[history], top=2)
    assert named == [[2, 0], [1, 3]]
    twice = because_similar(np.array([[1, 0]], np.float32), np.array([0, 1, 0]), vectors[[0, 1, 0]], top=3)
    assert twice == [[0, 1]]  # a repeated item is named once


def test_leave_one_out_is_the_exact_twin_on_the_bundle(knob_rec):
    user = _users(knob_rec)[2]
    h = knob_rec.histories[user]
    items = knob_rec.recommend(user_id=user, k=5).items
    vectors = knob_rec.vectors[[knob_rec.catalog.row_of[x["item_id"]] for x in items]]

    def encode(keep: np.ndarray) -> np.ndarray:
        return knob_rec.encode(History(h.rows[keep], h.events[keep], h.dwell[keep], h.gaps[keep]))

    positions, drops = leave_one_out_drops(encode, len(h.rows), vectors)
    full = vectors @ knob_rec.encode(h)
    j = len(positions) - 1
    keep = np.ones(len(h.rows), bool)
    keep[positions[j]] = False
    np.testing.assert_allclose(drops[:, j], full - vectors @ encode(keep), atol=1e-6)
    assert positions[-1] == len(h.rows) - 1 and len(positions) == min(WINDOW, len(h.rows))


def test_batch_scoring_chooses_the_lists_online_requests_get(knob_rec):
    users = _users(knob_rec, 10)
    histories = [knob_rec.histories[u] for u in users]
    for settings in (ListSettings(diversity=0.7), ListSettings(max_per_category=2, explore=0.2)):
        scores, rows = BatchScorer(knob_rec, k=6, ranking=settings).top_k(histories, users)
        for b, user in enumerate(users):
            online = knob_rec.recommend(user_id=user, k=6, diversity=settings.diversity,
                                        max_per_category=settings.max_per_category, explore=settings.explore)  # fmt: skip
            assert [knob_rec.item_ids[r] for r in rows[b] if r >= 0] == [x["item_id"] for x in online.items]


def test_live_added_items_take_part(run_and_bundle):
    rec = Recommender.load(run_and_bundle[1])
    category = rec.bundle.categories[1]
    rec.catalog.add_items([("fresh-1", [category]), ("fresh-2", [category])])
    user = _users(rec)[0]
    for knobs in ({"diversity": 0.5}, {"explore": 0.5, "max_per_category": 3}):
        result = rec.recommend(user_id=user, k=rec.catalog.__len__() + 2, explain=True, **knobs)
        ids = [x["item_id"] for x in result.items]
        assert {"fresh-1", "fresh-2"} <= set(ids) and len(ids) == len(set(ids))
        assert all(x["because"] for x in result.items)


@pytest.fixture(scope="module")
def client(run_and_bundle, tmp_path_factory):
    settings = Settings(bundle=str(run_and_bundle[1]), state_dir=str(tmp_path_factory.mktemp("state")),
                        diversity=0.3)  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_http_knobs_explain_and_errors(client):
    rec = client.app.state.live.recommender
    history = [rec.item_ids[r] for r in next(iter(rec.histories.values())).rows]
    body = client.post("/recommend", json={"history": history, "k": 5, "explain": True}).json()
    assert body["ranking"]["diversity"] == 0.3  # the server's default
    assert all(x["because"] and set(x["because"]) <= set(history) for x in body["items"])
    assert "explore" not in body["items"][0]
    off = client.post("/recommend", json={"history": history, "k": 5, "diversity": 0}).json()
    assert "ranking" not in off and "because" not in off["items"][0]
    explored = client.post("/recommend", json={"history": history, "k": 5, "explore": 0.4, "seed": 9}).json()
    assert sum(x["explore"] for x in explored["items"]) == 2 and explored["ranking"]["seed"] == 9
    for field, value in (("diversity", 1.5), ("calibrate", "high"), ("explore", -0.1), ("max_per_category", -2),
                         ("seed", -1), ("explain", "yes"), ("diversity", True)):  # fmt: skip
        response = client.post("/recommend", json={"history": history, field: value})
        assert response.status_code == 422, (field, value)
        assert field in response.text
