"""The served evaluation (twotower.served) and the responsible-personalization metrics, against hand-computed
values and against what the bundle actually serves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serving.core.diversify import request_seed
from serving.core.index import IndexSpec
from serving.core.listsettings import ListSettings
from serving.recommender import Recommender
from twotower import metrics
from twotower.evaluate import reranked_ranks
from twotower.export import export_bundle
from twotower.served import ListReranker, pick_list_settings


def test_reranked_ranks_hand_computed():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], dtype=np.float32)
    ranks = metrics.target_ranks(scores, np.array([3]))  # item 3 ranks 4th by score
    # the list took items 4 and 0: item 3 comes after them, behind the one untaken item above it (1, 2)
    assert reranked_ranks(scores, np.array([3]), ranks, np.array([[4, 0]])).tolist() == [5.0]
    assert reranked_ranks(scores, np.array([4]), metrics.target_ranks(scores, np.array([4])),
                          np.array([[4, 0]])).tolist() == [1.0]  # fmt: skip
    masked = scores.copy()
    masked[0, 2] = -np.inf  # a history item is never a hit
    inf_rank = metrics.target_ranks(masked, np.array([2]))
    assert reranked_ranks(masked, np.array([2]), inf_rank, np.array([[0, 1]])).tolist() == [np.inf]


def test_miscalibration_and_exposure_hand_computed():
    members = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)  # item 2 is half of each
    kl = metrics.miscalibration(np.array([[0, 0]]), np.array([[1, 2, -1]]), members)
    p = np.array([0.25, 0.75])  # history: item 1 (all of category 1) and item 2 (half each)
    q = np.array([1.0, 0.0])
    smooth = 0.99 * q + 0.01 * p
    assert kl[0] == pytest.approx(float((p * np.log(p / smooth)).sum()), rel=1e-5)
    nothing = metrics.miscalibration(np.array([[0, 1]]), np.array([[-1, -1, -1]]), members)
    assert np.isnan(nothing[0])
    popularity = np.arange(20, dtype=float)  # item i is the i-th least popular: deciles of two items each
    assert metrics.popularity_deciles(popularity).tolist() == [i // 2 for i in range(20)]
    shares = metrics.exposure_by_decile(np.array([[19, 18, 0, 5]]), popularity)
    assert shares == [0.25, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]


def test_pick_list_settings_takes_the_most_accurate_setting_that_does_not_narrow():
    # (diversity, calibrate) -> (val recall@10, val diversity@10)
    table = {(0.0, 0.0): (0.30, 0.60), (0.1, 0.0): (0.295, 0.66), (0.2, 0.0): (0.29, 0.71),
             (0.3, 0.0): (0.20, 0.80), (0.0, 0.2): (0.30, 0.70), (0.1, 0.2): (0.296, 0.72),
             (0.2, 0.2): (0.28, 0.74), (0.3, 0.2): (0.19, 0.85)}  # fmt: skip

    def evaluate(s: ListSettings) -> dict:
        recall, div = table[(s.diversity, s.calibrate)]
        return {"recall@10": recall, "ndcg@10": recall / 2, "diversity@10": div}

    def calibrated(s: ListSettings) -> dict:  # calibration lowers miscalibration, diversity a little too
        return {**evaluate(s), "miscalibration@10": 1.0 - 2 * s.calibrate - 0.1 * s.diversity}

    grid = {"diversity": [0.3, 0.0, 0.2, 0.1], "calibrate": [0.0, 0.2]}
    model = {"recall@10": 0.30, "diversity@10": 0.70}
    # feasible: (0.2, 0.0), (0.0, 0.2), (0.1, 0.2); the least miscalibrated is (0.1, 0.2)
    chosen, record = pick_list_settings(ListSettings(), grid, calibrated, model)
    assert (chosen.diversity, chosen.calibrate) == (0.1, 0.2) and len(record["val"]) == 8
    assert record["outcome"].endswith("the least miscalibrated")
    # without categories (no miscalibration): the most accurate of them
    chosen, record = pick_list_settings(ListSettings(), grid, evaluate, model)
    assert (chosen.diversity, chosen.calibrate) == (0.0, 0.2)  # 0.30 at 0.70
    assert record["outcome"].endswith("the most accurate")
    # nothing reaches the model's diversity with the recall kept: the most diverse that keeps it
    chosen, record = pick_list_settings(ListSettings(), grid, evaluate, {**model, "diversity@10": 0.9})
    assert (chosen.diversity, chosen.calibrate) == (0.1, 0.2) and record["outcome"].startswith("most diverse")
    # no setting keeps the recall: the most accurate, the gentler knobs on a tie
    chosen, _ = pick_list_settings(ListSettings(), grid, evaluate, {"recall@10": 0.5, "diversity@10": 0.7})
    assert (chosen.diversity, chosen.calibrate) == (0.0, 0.0)


@pytest.fixture(scope="module")
def flat_rec(run_and_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("flat") / "bundle"
    export_bundle(run_and_bundle[0], out, IndexSpec(kind="flat"))
    return Recommender.load(out)


@pytest.mark.parametrize(
    "settings",
    [ListSettings(diversity=0.6), ListSettings(max_per_category=2, calibrate=0.4), ListSettings(explore=0.3)],
)
def test_the_evaluated_list_is_the_served_list(flat_rec, settings):
    rec = flat_rec
    width = int(rec.members.sum(1).max())
    categories = np.zeros((len(rec.item_ids), width), dtype=np.int64)
    for row, cats in enumerate(rec.members):
        found = np.flatnonzero(cats)
        categories[row, : len(found)] = found
    reranker = ListReranker(settings, rec.vectors, categories, rec.members.shape[1], rec.popularity)
    checked = 0
    for user, history in list(rec.histories.items())[:15]:
        if len(history.rows) > rec.max_len:
            continue
        query = rec.encode(history)
        lift = rec.intent.session_lift(history.rows) if rec.intent is not None else None
        if lift is not None and lift.any():  # the product serving computes, to the last bit
            scores = rec.extended_vectors @ np.concatenate([query, rec.intent.query_weights(lift)])
        else:
            scores = rec.vectors @ query
        scores = scores[None, :].astype(np.float32)
        scores[0, history.rows] = -np.inf
        batch = {"items": torch.from_numpy(history.rows[None, :] + 1)}
        evaluated = reranker(scores, batch)[0]
        # an evaluation has no user id: exploration is seeded from the history alone
        knobs = {k: v for k, v in settings.as_dict().items() if k != "depth"}
        served = rec.recommend(user_id=user, k=10, seed=request_seed(None, history.rows.tobytes()), **knobs)
        assert [rec.item_ids[c] for c in evaluated if c >= 0] == [x["item_id"] for x in served.items]
        checked += 1
    assert checked >= 5
