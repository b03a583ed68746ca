"""The list re-rank (serving.core.diversify) against brute-force references and hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from serving.core.diversify import (
    CALIBRATION_ALPHA,
    Candidates,
    explore_slots,
    head_mask,
    history_mix,
    kl_divergence,
    rerank_list,
    similarity_vectors,
)
from serving.core.listsettings import ListSettings
from twotower import metrics


def _candidates(m: int = 30, d: int = 8, c: int = 5, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(m, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = np.sort(rng.uniform(0.2, 0.9, size=m))[::-1].astype(np.float32)
    members = rng.random((m, c)) < 0.3
    members[np.arange(m), rng.integers(0, c, m)] = True  # every item in at least one category
    head = np.zeros(m, dtype=bool)
    head[: m // 3] = True
    return Candidates(scores, vectors, members, head)


def _values(cands: Candidates, chosen: list[int], s: ListSettings, mix: np.ndarray | None) -> np.ndarray:
    """The greedy objective of the module docstring for every candidate joining ``chosen``, recomputed from
    scratch (-inf: chosen already, or over the cap)."""
    values = np.full(len(cands.scores), -np.inf)
    spread = float(cands.scores.max() - cands.scores.min())
    for i in range(len(cands.scores)):
        if i in chosen:
            continue
        listed = chosen + [i]
        if s.max_per_category and (cands.members[listed].sum(0) > s.max_per_category).any():
            continue
        value = (1 - s.calibrate) * float(cands.scores[i]) if mix is not None else float(cands.scores[i])
        if s.calibrate and mix is not None:
            value -= s.calibrate * _kl_of_list(cands.members[listed], mix)
        sim = max((float(cands.vectors[i] @ cands.vectors[j]) for j in chosen), default=0.0)
        values[i] = value - s.diversity * spread * sim
    return values


def _reference(cands: Candidates, k: int, s: ListSettings, mix: np.ndarray | None) -> list[int]:
    """The brute-force greedy: the best candidate by :func:`_values` at every step."""
    chosen: list[int] = []
    for _ in range(k):
        values = _values(cands, chosen, s, mix)
        if values.max() == -np.inf:
            break
        chosen.append(int(np.argmax(values)))
    return chosen


def _picked_in_order(cands: Candidates, k: int, s: ListSettings, mix: np.ndarray | None) -> list[int]:
    """The re-rank's choices in the order it made them (the list itself is shown by score)."""
    from serving.core.diversify import _greedy

    return _greedy(cands, k, s, mix, np.ones(len(cands.scores), dtype=bool)).tolist()


def _kl_of_list(members: np.ndarray, p: np.ndarray) -> float:
    q = np.zeros(members.shape[1])
    for row in members:
        q[row] += 1.0 / row.sum()
    q /= q.sum()
    smooth = (1 - CALIBRATION_ALPHA) * q + CALIBRATION_ALPHA * p
    return float(sum(p[c] * np.log(p[c] / smooth[c]) for c in range(len(p)) if p[c] > 0))


@pytest.mark.parametrize(
    "settings",
    [
        ListSettings(diversity=0.3),
        ListSettings(diversity=0.8),
        ListSettings(calibrate=0.5),
        ListSettings(calibrate=1.0),
        ListSettings(max_per_category=2),
        ListSettings(diversity=0.5, calibrate=0.3),
        ListSettings(diversity=0.4, max_per_category=3, calibrate=0.2),
    ],  # fmt: skip
)
def test_greedy_matches_the_brute_force_objective(settings):
    for seed in range(5):
        cands = _candidates(seed=seed)
        mix = history_mix(cands.members[[3, 7, 7, 20, 25]])
        order = _picked_in_order(cands, 10, settings, mix)
        for step, pick in enumerate(
            order
        ):  # each pick is a best one by the brute-force objective (ties: any)
            values = _values(cands, order[:step], settings, mix)
            assert values[pick] >= values.max() - 1e-9, (seed, step)
        assert len(order) == len(_reference(cands, 10, settings, mix))
        assert rerank_list(cands, 10, settings, mix).order.tolist() == sorted(order)  # shown by score


def test_all_knobs_off_is_the_plain_top_k():
    cands = _candidates()
    assert rerank_list(cands, 10, ListSettings(depth=50), None).order.tolist() == list(range(10))
    assert not ListSettings().active and ListSettings(explore=0.1).active


def test_mmr_hand_computed():
    # a and b are the same direction, c is orthogonal; the scores span 0.5. After a, b is worth
    # 0.99 - d * 0.5 * 1 and c 0.5: b stays second up to d = 0.98, c passes it above
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    cands = Candidates(np.array([1.0, 0.99, 0.5], np.float32), vectors, None, np.zeros(3, bool))
    assert _reference(cands, 3, ListSettings(diversity=1.0), None) == [0, 2, 1]
    assert rerank_list(cands, 2, ListSettings(diversity=1.0)).order.tolist() == [0, 2]
    assert rerank_list(cands, 2, ListSettings(diversity=0.97)).order.tolist() == [0, 1]
    assert rerank_list(cands, 3, ListSettings(diversity=0.97)).order.tolist() == [0, 1, 2]
    assert rerank_list(cands, 3, ListSettings(diversity=0.0)).order.tolist() == [0, 1, 2]


def test_similarity_vectors_average_the_two_cosines():
    vectors = np.array([[1, 0], [0.6, 0.8], [2, 0]], dtype=np.float32)  # the third is not unit: normalised
    members = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    sim = similarity_vectors(vectors, members)
    assert sim[0] @ sim[1] == pytest.approx((0.6 + 1 / np.sqrt(2)) / 2, rel=1e-6)
    assert sim[0] @ sim[2] == pytest.approx(0.5, rel=1e-6)  # same direction, no category shared
    assert similarity_vectors(vectors, None)[2] @ similarity_vectors(vectors, None)[0] == pytest.approx(1.0)


def test_calibration_first_pick_is_the_exhaustive_optimum_for_one_slot():
    cands = _candidates(seed=4)
    mix = history_mix(cands.members[[1, 2]])
    for c in (0.3, 1.0):
        value = [(1 - c) * cands.scores[i] - c * _kl_of_list(cands.members[[i]], mix) for i in range(30)]
        assert rerank_list(cands, 1, ListSettings(calibrate=c), mix).order[0] == int(np.argmax(value))
    # pure calibration over two slots: greedy reaches the exhaustive optimum's KL here or close to it
    pairs = min(_kl_of_list(cands.members[list(p)], mix) for p in itertools.combinations(range(30), 2))
    greedy = rerank_list(cands, 2, ListSettings(calibrate=1.0), mix).order
    assert _kl_of_list(cands.members[greedy], mix) <= pairs + 0.35


def test_calibration_lowers_miscalibration_and_cap_is_respected():
    cands = _candidates(m=60, seed=2)
    mix = history_mix(cands.members[[0, 5, 9]])
    plain = rerank_list(cands, 10, ListSettings(), mix).order
    calibrated = rerank_list(cands, 10, ListSettings(calibrate=0.7), mix).order
    history = np.array([[0, 5, 9]])  # the rows the mix came from

    def miscalibration(order: np.ndarray) -> float:
        return float(metrics.miscalibration(order[None, :], history, cands.members)[0])

    assert miscalibration(calibrated) < miscalibration(plain)
    for cap in (1, 2, 3):
        order = rerank_list(cands, 10, ListSettings(max_per_category=cap), mix).order
        assert cands.members[order].sum(0).max() <= cap
    # a cap too tight for k items: a shorter list, never a broken cap
    tight = rerank_list(cands, 10, ListSettings(max_per_category=1), mix).order
    assert len(tight) <= 5 and cands.members[tight].sum(0).max() <= 1


def test_exploration_is_seeded_counted_and_drawn_from_outside_the_usual():
    cands = _candidates(m=60, seed=1)
    mix = history_mix(cands.members[[0, 1, 2, 3]])
    settings = ListSettings(explore=0.3)
    first = rerank_list(cands, 10, settings, mix, np.random.default_rng(7))
    again = rerank_list(cands, 10, settings, mix, np.random.default_rng(7))
    assert (
        first.order.tolist() == again.order.tolist() and first.explored.sum() == explore_slots(0.3, 10) == 3
    )
    usual = mix >= 0.1
    for j in first.order[first.explored]:
        assert not cands.head[j] or not (cands.members[j] & usual).any()
    assert len(set(first.order.tolist())) == 10
    draws = {tuple(rerank_list(cands, 10, settings, mix, np.random.default_rng(s)).order) for s in range(8)}
    assert len(draws) > 1  # the seed matters
    assert explore_slots(0.01, 10) == 1 and explore_slots(0.0, 10) == 0 and explore_slots(1.0, 10) == 10


@pytest.mark.parametrize(
    "bad",
    [
        {"diversity": 1.5},
        {"diversity": -0.1},
        {"calibrate": 2},
        {"explore": "0.5"},
        {"max_per_category": -1},
        {"max_per_category": 1.5},
        {"depth": 0},
        {"diversity": True},
    ],  # fmt: skip
)
def test_bad_settings_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ListSettings(**bad)


def test_kl_head_and_mix_hand_computed():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([1.0, 0.0, 0.0])
    smooth = 0.99 * q + 0.01 * p
    expected = 0.5 * np.log(0.5 / smooth[0]) + 0.5 * np.log(0.5 / smooth[1])
    assert kl_divergence(p, q) == pytest.approx(expected)
    assert kl_divergence(p, p) == pytest.approx(0.0)
    members = np.array([[1, 1, 0], [0, 0, 1]], dtype=bool)  # an item in two categories spreads half to each
    assert history_mix(members).tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert head_mask(np.array([1, 50, 30, 10, 9])).tolist() == [False, True, True, False, False]
    assert head_mask(np.zeros(3)).tolist() == [False, False, False]
