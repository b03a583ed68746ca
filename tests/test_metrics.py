"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twotower import metrics


def test_target_ranks_ties_count_against_and_nan_is_a_miss():
    scores = np.array(
        [
            [0.9, 0.5, 0.1, 0.3],  # target 1 (0.5): one better -> rank 2
            [0.2, 0.2, 0.2, 0.1],  # target 0 tied with two others -> rank 3
            [np.nan, 0.4, 0.3, 0.2],  # target 2: NaN never outranks -> rank 2
            [0.1, np.nan, 0.3, 0.2],  # target 1 is NaN -> never a hit
            [0.1, -np.inf, 0.3, 0.2],  # target 1 masked -> never a hit
        ]
    )
    ranks = metrics.target_ranks(scores, np.array([1, 0, 2, 1, 1]))
    assert ranks.tolist() == [2.0, 3.0, 2.0, math.inf, math.inf]


def test_recall_ndcg_mrr_by_hand_with_ranks_exactly_at_the_cutoff():
    ranks = np.array([1.0, 3.0, 10.0, 11.0, math.inf])  # 3 and 10 sit exactly at a cutoff: hits there
    assert metrics.recall_at_k(ranks, 10) == pytest.approx(3 / 5)
    assert metrics.recall_at_k(ranks, 3) == pytest.approx(2 / 5)
    # 1/log2(1 + 1), 1/log2(3 + 1), 1/log2(10 + 1)
    assert metrics.ndcg_at_k(ranks, 10) == pytest.approx((1.0 + 1.0 / 2.0 + 1.0 / math.log2(11)) / 5)
    assert metrics.ndcg_at_k(ranks, 3) == pytest.approx((1.0 + 1.0 / 2.0) / 5)
    assert metrics.ndcg_at_k(ranks, 2) == pytest.approx(1 / 5)
    assert metrics.mrr(ranks) == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 11) / 5)


def test_top_k_order_and_nan():
    scores = np.array([[0.1, np.nan, 0.7, 0.3], [5.0, 4.0, 3.0, 2.0]])
    assert metrics.top_k(scores, 2).tolist() == [[2, 3], [0, 1]]


def test_coverage_gini_novelty_by_hand():
    lists = np.array([[0, 1], [0, 2]])
    assert metrics.catalog_coverage(lists, 4) == 0.75
    # exposure counts sorted: [0, 1, 1, 2]; G = sum((2i - n - 1) x_i) / (n * sum x) with i = 1..4
    expected = ((-3) * 0 + (-1) * 1 + 1 * 1 + 3 * 2) / (4 * 4)
    assert metrics.gini_exposure(lists, 4) == pytest.approx(expected)
    assert metrics.gini_exposure(np.array([[0, 1], [2, 3]]), 4) == 0.0  # perfectly even
    popularity = np.array([0.5, 0.25, 0.125, 1.0])
    assert metrics.novelty(lists, popularity) == pytest.approx((1 + 2 + 1 + 3) / 4)
    assert metrics.user_popularity(np.array([0.0, 9.0]), 9).tolist() == [0.1, 1.0]


def test_intra_list_diversity_by_hand():
    categories = np.array([[1, 0], [1, 2], [3, 0], [0, 0]])  # item 0: {1}, 1: {1, 2}, 2: {3}, 3: none
    # list (0, 1): Jaccard 1/2 -> distance 0.5; list (0, 2): disjoint -> 1; list (0, 3): no categories -> 1
    assert metrics.intra_list_diversity(np.array([[0, 1]]), categories) == pytest.approx(0.5)
    assert metrics.intra_list_diversity(np.array([[0, 2], [0, 3]]), categories) == pytest.approx(1.0)
    three = metrics.intra_list_diversity(np.array([[0, 1, 2]]), categories)
    assert three == pytest.approx((0.5 + 1 + 1) / 3)
    assert "diversity@10" not in metrics.beyond_accuracy(np.array([[0, 1]]), 4, np.full(4, 0.5), k=10)


def test_category_mix_equals_the_dense_sum_of_category_weights():
    """The sparse product against the exact dense twin: each list's items' weight rows summed (padding -1
    left out), items of no category and of several categories included."""
    from serving.core.diversify import category_weights

    rng = np.random.default_rng(3)
    members = rng.random((50, 6)) < 0.3  # some items in no category, some in several
    members[:, 0] = False
    lists = rng.integers(-1, 50, (8, 12))
    lists[0] = -1  # an empty list
    weights = category_weights(members)  # (N, C)
    dense = np.where(lists[..., None] >= 0, weights[np.maximum(lists, 0)], 0.0).sum(1)  # (B, C)
    mix = metrics.CategoryMix(members)
    assert np.allclose(mix(lists), dense, rtol=0, atol=1e-12) and mix(lists)[0].sum() == 0
    top = rng.integers(0, 50, (8, 3))
    shared = metrics.miscalibration(top, lists, mix=mix)
    assert np.array_equal(shared, metrics.miscalibration(top, lists, members), equal_nan=True)
    assert np.isnan(shared[0])  # an empty history: nothing to be calibrated to


def test_evaluation_membership_matches_serving_membership():
    from serving.core.intent import membership
    from twotower.evaluate import _members

    categories = np.random.default_rng(4).integers(0, 9, (300, 3))
    categories[:7] = 0
    assert np.array_equal(_members(categories), membership(categories.tolist(), int(categories.max()) + 1))
    assert _members(np.zeros((5, 2), dtype=np.int64)) is None
