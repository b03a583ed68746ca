"""Session-intent re-rank: the math against hand-computed values, its off switch, and that serving, batch
scoring and the training-time evaluation re-rank alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from serving.core.intent import CategoryIntent, IntentSettings, membership, recent_rows
from serving.recommender import Recommender

# 4 items over categories 1..2 (0 = none): item 0 in {1}, item 1 in {2}, item 2 in {1, 2}, item 3 in none
MEMBERS = membership([[1], [2], [1, 2], []], 3)


def test_membership_and_recent_rows():
    assert MEMBERS.tolist() == [[False, True, False], [False, False, True], [False, True, True], [False] * 3]
    assert recent_rows([np.array([5, 6, 7]), np.array([], np.int64)], 2).tolist() == [[6, 7], [-1, -1]]


def test_lift_and_boost_match_hand_computed_values():
    counts = np.array([2.0, 1.0, 1.0, 0.0])  # baseline: category 1 in 3/4 of interactions, category 2 in 2/4
    intent = CategoryIntent.build(MEMBERS, counts, ["<pad>", "a", "b"], IntentSettings(1.0, 3, 0.5, 10))
    np.testing.assert_allclose(intent.baseline, [0.0, 0.75, 0.5])
    # history oldest -> newest: item 1, item 0, item 1; weights 0.25, 0.5, 1 (newest last)
    lift = intent.history_lift([np.array([1, 0, 1])])[0]
    share = np.array([0.0, 0.5 / 1.75, 1.25 / 1.75])
    expected = np.clip((share - [0.0, 0.75, 0.5]) / (1 - np.array([0.0, 0.75, 0.5])), 0, 1)
    np.testing.assert_allclose(lift, expected, rtol=1e-6)  # category 1 below baseline: 0; category 2 lifted
    np.testing.assert_allclose(intent.session_lift(np.array([1, 0, 1])), expected, rtol=1e-6)  # float32
    boosts = intent.boosts(lift[None], np.array([[0, 1, 2, 3, -1]]))[0]
    np.testing.assert_allclose(boosts, [0.0, expected[2] ** 2, expected[2] ** 2, 0.0, 0.0], rtol=1e-6)
    assert intent.explain(lift) == {"b": round(float(expected[2]), 3)}
    assert intent.history_lift([np.array([], np.int64)]).tolist() == [[0.0, 0.0, 0.0]]
    # two lifted categories add up: boost * (l_a^2 + l_b^2) for an item in both
    both = np.array([[0.0, 0.5, 1.0]])
    assert intent.boosts(both, np.array([[0, 1, 2]]))[0].tolist() == pytest.approx([0.25, 1.0, 1.25])


def test_rerank_orders_by_boosted_score_and_keeps_model_order_on_ties():
    intent = CategoryIntent.build(MEMBERS, np.ones(4), ["<pad>", "a", "b"], IntentSettings(0.5, 5, 1.0, 10))
    lift = np.array([[0.0, 0.0, 1.0]])  # the session is all category 2
    scores = np.array([[0.9, 0.8, 0.7, 0.6, -np.inf]], np.float32)
    rows = np.array([[0, 3, 1, 2, -1]])
    out_scores, out_rows = intent.rerank(scores, rows, lift, 4)
    assert out_rows.tolist() == [[1, 2, 0, 3]]  # 0.7 + 0.5, 0.6 + 0.5, then 0.9, 0.8 in the model's order
    np.testing.assert_allclose(out_scores, [[1.2, 1.1, 0.9, 0.8]], rtol=1e-6)
    _, short = intent.rerank(scores, rows, lift, 5)
    assert short.tolist() == [[1, 2, 0, 3, -1]]
    one_scores, one_rows = intent.rerank_one(scores[0, :4], rows[0, :4], lift[0], 4)
    assert one_rows.tolist() == out_rows[0].tolist() and np.allclose(one_scores, out_scores[0])


def test_off_switches():
    assert CategoryIntent.build(MEMBERS, np.ones(4), ["<pad>", "a", "b"], IntentSettings(boost=0.0)) is None
    assert (
        CategoryIntent.build(np.zeros((4, 3), bool), np.ones(4), ["<pad>", "a", "b"], IntentSettings())
        is None
    )
    with pytest.raises(ValueError, match="invalid intent settings"):
        IntentSettings(decay=0.0)


def _session_user(rec: Recommender) -> tuple[list[str], str]:
    """A history of one category's items (the session a new user starts), and that category."""
    from twotower.benchmarks.adaptation import items_by_category

    members = items_by_category(rec)
    category = max(members, key=lambda c: len(members[c]))
    return members[category][:5], category


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_recommender_rerank_is_the_model_score_plus_boost(run_and_bundle, kind):
    """Exact index: every item scored ``model + boost`` (one extended product); HNSW: its candidates boosted.
    Both against brute force with the boost added by hand (the catalog is smaller than ``depth``)."""
    from serving.core.index import IndexSpec, build_index

    rec = Recommender.load(run_and_bundle[1])
    rec.index, rec.spec = build_index(rec.vectors, IndexSpec(kind=kind))
    assert rec.intent is not None and rec.manifest["rerank"]["intent"] == rec.intent.settings.as_dict()
    history, category = _session_user(rec)
    served = rec.recommend(history=history, k=10)
    assert category in served.intent
    resolved = rec.resolve(history)
    query = rec.encode(resolved.history)
    scores = rec.vectors @ query  # the exact twin: brute force, then the boost by hand
    scores[resolved.history.rows] = -np.inf
    lift = rec.intent.history_lift([resolved.history.rows])
    boosted = scores + rec.intent.boosts(lift, np.arange(len(scores))[None])[0]
    expected = [rec.item_ids[r] for r in np.argsort(-boosted, kind="stable")[:10]]
    assert [x["item_id"] for x in served.items] == expected
    np.testing.assert_allclose([x["score"] for x in served.items], np.sort(boosted)[::-1][:10], rtol=1e-5)
    plain = rec.recommend(history=history, k=10, rerank=False)
    off = Recommender.load(run_and_bundle[1], intent_boost=0.0)
    off.index, off.spec = rec.index, rec.spec
    assert (
        off.intent is None and off.recommend(history=history, k=10).items == plain.items and not plain.intent
    )


def test_training_evaluation_ranks_as_serving(run_and_bundle):
    """The ``served`` metrics come from the same re-rank as online answers: top-10 lists agree."""
    from serving.core.history import padded_feeds
    from twotower.artifacts import load_model
    from twotower.batch_predict import run_intent
    from twotower.evaluate import IntentScorer, ModelScorer, mask_history

    run, bundle, manifest = run_and_bundle
    rec = Recommender.load(bundle)
    net = load_model(run / "model.pt")
    scorer = IntentScorer(ModelScorer(net), run_intent(run), scale=float(net.temperature))
    users = list(rec.histories)[:40]
    histories = [rec.histories[u] for u in users]
    feeds = padded_feeds(histories, rec.max_len)
    exclude = np.zeros((len(users), max(len(h) for h in histories)), np.int64)
    for b, h in enumerate(histories):
        exclude[b, : len(h)] = h.rows + 1
    batch = {k: torch.from_numpy(v) for k, v in feeds.items()} | {"exclude": torch.from_numpy(exclude)}
    scores = mask_history(scorer(batch), exclude)  # as evaluate_scorer does
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    agree = [
        len({rec.item_ids[r] for r in top[b]} & {x["item_id"] for x in rec.recommend(user_id=u, k=10).items})
        / 10
        for b, u in enumerate(users)
    ]
    assert np.mean(agree) >= 0.95
    served = manifest["metrics_served"]  # the run's served test figures, quoted as measured
    assert served == json.loads((run / "metrics.json").read_text())["served"]["test"]
    assert served["recall@10"] > 0


def test_a_new_item_gets_the_session_boost(run_and_bundle):
    rec = Recommender.load(run_and_bundle[1])
    history, category = _session_user(rec)
    rec.catalog.add_items([("fresh-item", [category])])
    items = rec.recommend(history=history, k=len(rec.item_ids) + 1).items
    fresh = next(x for x in items if x["item_id"] == "fresh-item")
    query = rec.encode_ids(history)
    lift = rec.intent.history_lift([rec.resolve(history).history.rows])[0]
    expected = (
        float(rec.catalog.changes.vectors[0] @ query)
        + rec.intent.settings.boost * lift[rec.catalog.category_of[category]] ** 2
    )
    assert fresh["score"] == pytest.approx(expected, rel=1e-5)
