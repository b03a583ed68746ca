"""The in-process recommender: unpadded graph and its twin, filters, exact ranking, fallback, search knobs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.core.index import search_parameters
from serving.core.search import exact_search
from serving.recommender import Recommender


def test_unpadded_graph_matches_batch_graph(rec):
    """Single requests run the unpadded graph; the padded batch graph is its exact twin."""
    assert rec.encoder.single_session is not rec.encoder.session
    worst = max(
        np.abs(rec.encode(h) - rec.encode(h, padded_graph=True)).max() for h in rec.histories.values()
    )
    assert worst <= 1e-6


def test_bundle_without_unpadded_graph_still_serves(run_and_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "old"
    shutil.copytree(run_and_bundle[1], bundle)
    (bundle / "user_tower_unpadded.onnx").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["user_tower_unpadded.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    old = Recommender.load(bundle)
    assert old.encoder.single_session is old.encoder.session
    user = next(iter(old.histories))
    assert (
        old.recommend(user_id=user, k=5).items
        == Recommender.load(run_and_bundle[1]).recommend(user_id=user, k=5).items
    )


def test_filters_always_give_k(rec):
    user = next(iter(rec.histories))
    seen = {rec.item_ids[r] for r in rec.histories[user].rows}
    top = rec.recommend(user_id=user, k=10).items
    assert len(top) == 10 and not seen & {x["item_id"] for x in top}
    banned = [x["item_id"] for x in top[:5]]
    again = rec.recommend(user_id=user, k=10, exclude_items=banned).items
    assert len(again) == 10 and not set(banned) & {x["item_id"] for x in again}
    allow = [i for i in rec.item_ids if i not in seen][:12]
    allowed = rec.recommend(user_id=user, k=10, allow_items=allow).items
    assert len(allowed) == 10 and {x["item_id"] for x in allowed} <= set(allow)
    # the allowed items are ranked exactly as brute force would
    query = rec.encode(rec.histories[user])
    rows = [rec.catalog.row_of[i] for i in allow]
    expected = [allow[j] for j in np.argsort(-(rec.vectors[rows] @ query), kind="stable")[:10]]
    assert [x["item_id"] for x in allowed] == expected
    # fewer allowed than k: all of them, never an excluded one
    few = rec.recommend(user_id=user, k=10, allow_items=allow[:3]).items
    assert {x["item_id"] for x in few} == set(allow[:3])


def test_scores_are_sorted_and_match_exact(rec):
    user = next(iter(rec.histories))
    top = rec.recommend(user_id=user, k=5, exclude_seen=False).items
    scores = [x["score"] for x in top]
    assert scores == sorted(scores, reverse=True)
    query = rec.encode(rec.histories[user])
    _, exact = exact_search(rec.vectors, query[None, :], 5)
    assert [x["item_id"] for x in top] == [rec.item_ids[i] for i in exact[0]]


def test_fallback_and_unknown_items(rec):
    anon = rec.recommend(user_id="no-such-user", k=5)
    assert anon.source == "popularity" and len(anon.items) == 5
    empty = rec.recommend(history=[], k=5)
    assert empty.items == anon.items
    mixed = rec.recommend(history=[rec.item_ids[0], "ghost"], k=5)
    assert mixed.source == "model" and mixed.unknown_items == ["ghost"] and mixed.history_length == 1
    assert len(rec.similar_items(rec.item_ids[0], 4)) == 4
    with pytest.raises(KeyError):
        rec.similar_items("ghost")


def test_search_knobs_change_without_rebuild(run_and_bundle, caplog):
    from serving.settings import Settings

    rec = Recommender.load(run_and_bundle[1], search={"ef_search": 5})
    assert rec.spec.kind == "hnsw" and rec.spec.ef_search == 5
    before = rec.spec
    assert rec.set_search(ef_search=300).ef_search == 300 and before.ef_search == 5  # replaced, not mutated
    assert search_parameters(rec.index, rec.spec).efSearch == 300
    assert len(rec.recommend(history=[rec.item_ids[1], rec.item_ids[2]], k=5).items) == 5
    with caplog.at_level("WARNING", logger="serving.core.index"):
        rec.set_search(nprobe=4)
    assert "no effect on a hnsw index" in caplog.text
    for bad in ({"nprob": 4}, {"ef_search": 0}, {"ef_search": True}, {"ef_search": "64"}, {"ef_search": 2.5}):
        with pytest.raises(ValueError, match="search parameter"):
            rec.set_search(**bad)
    assert rec.spec.ef_search == 300  # a refused change leaves the spec as it was
    assert Settings(nprobe=7).load_kwargs()["search"] == {"nprobe": 7}
    assert Settings().load_kwargs()["search"] == {}
