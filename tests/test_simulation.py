"""The feedback-loop simulator: oracle, choice model, measures, and runs through the real serving path."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from serving.core.request import RecommendationRequest
from twotower.config import PROJECT_ROOT
from twotower.responsible.measures import category_weights, entropy_bits, recent_entropy, tail_mask
from twotower.responsible.oracle import EaseOracle, choice_probabilities, choose, ease_weights
from twotower.responsible.simulation import (
    POLICIES,
    Simulation,
    SimulationConfig,
    policy_fields,
    run_simulation,
)

KNOBS = {f.name for f in dataclasses.fields(RecommendationRequest)} >= {"diversity", "explore", "seed"}
TINY = SimulationConfig(users=10, rounds=4, k=5, seed=1, min_events=6)


# ---- oracle --------------------------------------------------------------------------------------------
def test_ease_weights_equal_a_direct_dense_computation():
    rng = np.random.default_rng(0)
    x = (rng.random((30, 12)) < 0.3).astype(np.float64)  # (U, N)
    l2 = 3.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(12))
    expected = np.eye(12) - p @ np.diag(1.0 / np.diag(p))  # B = I - P diagMat(1 / diag(P))
    got = ease_weights(sp.csr_matrix(x), l2)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    assert np.all(np.diag(got) == 0)


def test_oracle_fits_on_a_histories_table_and_scores_x_times_b():
    frame = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b", "c", "c", "c"],
                          "item_id": ["i0", "i1", "i1", "i1", "i2", "i0", "i2", "zz"]})  # fmt: skip
    oracle = EaseOracle.fit(frame, ["i0", "i1", "i2"], l2=1.0)
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.float64)  # repeats count once, "zz" unknown
    p = np.linalg.inv(x.T @ x + np.eye(3))
    b = np.eye(3) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(oracle.weights, b, atol=1e-12)
    np.testing.assert_allclose(oracle.scores([[0], [1, 2]]), np.array([[1.0, 0, 0], [0, 1, 1]]) @ b)
    assert oracle.n_users == 3 and "ease(l2=1)" in oracle.description


def test_choice_model_is_a_softmax_in_units_of_the_spread():
    scores = np.array([1.0, 0.0, -1.0])
    p = choice_probabilities(scores, spread=2.0, temperature=0.5)  # logits = scores / 1
    np.testing.assert_allclose(p, np.exp(scores) / np.exp(scores).sum())
    np.testing.assert_array_equal(choice_probabilities(scores, 2.0, 0.0), [1.0, 0.0, 0.0])
    draws = [choose(scores, 1.0, 1.0, np.random.default_rng(s)) for s in range(2000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, choice_probabilities(scores, 1.0, 1.0), atol=0.04)
    same = [choose(scores, 1.0, 1.0, np.random.default_rng(7)) for _ in range(2)]
    assert same[0] == same[1]


# ---- measures ------------------------------------------------------------------------------------------
def test_category_entropy_by_hand():
    items = pd.DataFrame({"categories": [["A"], ["A", "B"], [], ["C"], ["X"]]})
    w = category_weights(items, ["A", "B", "C"])
    np.testing.assert_array_equal(w, [[1, 0, 0], [0.5, 0.5, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert entropy_bits(np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert entropy_bits(np.zeros(3)) == 0.0
    # rows 1, 3: mix A .5, B .5, C 1 -> p = (.25, .25, .5): 1.5 bits
    assert recent_entropy([1, 3], w, window=20) == pytest.approx(1.5)
    # the window keeps the last 2 of [0, 0, 1, 3]: the leading A items do not count
    assert recent_entropy([0, 0, 1, 3], w, window=2) == pytest.approx(1.5)
    # rows 0, 0, 1: A 2.5, B .5 -> p = (5/6, 1/6)
    expected = -(5 / 6 * math.log2(5 / 6) + 1 / 6 * math.log2(1 / 6))
    assert recent_entropy([0, 0, 1], w, window=20) == pytest.approx(expected)
    assert recent_entropy([2], w, window=20) == 0.0  # no categories


def test_long_tail_is_outside_the_head_holding_the_share():
    # 50 + 30 = 80 of 100: the head is items 0 and 1 (the smallest top set reaching 80%)
    np.testing.assert_array_equal(tail_mask(np.array([10, 50, 30, 10]), 0.8), [True, False, False, True])
    # 50 + 29 = 79 falls short: the third item joins the head
    np.testing.assert_array_equal(tail_mask(np.array([50, 29, 11, 10]), 0.8), [False, False, False, True])
    np.testing.assert_array_equal(tail_mask(np.array([5, 5, 5, 5]), 0.5), [False, False, True, True])  # ties
    assert tail_mask(np.zeros(3), 0.8).all()


def test_policy_fields_drop_off_knobs_and_skip_missing_ones():
    fields, missing, skipped = policy_fields({"rerank": False, "no_such_knob": 0})
    assert fields == {"rerank": False} and missing == ["no_such_knob"] and skipped is None
    fields, missing, skipped = policy_fields({"no_such_knob": 0.7})
    assert fields == {} and "no_such_knob" in skipped


# ---- through the serving path --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated(rec):
    policies = {name: POLICIES[name] for name in ("model", "served", "diversity", "explore")}
    return run_simulation(rec, TINY, policies, trace=True)


def test_the_document_has_the_contract_keys_and_lengths(simulated):
    doc = json.loads(json.dumps(simulated))  # JSON-serialisable as written
    assert doc["rounds"] == 4 and doc["users"] == 10 and doc["oracle"].startswith("ease(l2=500)")
    names = ["model", "served", "diversity", "explore"] if KNOBS else ["model", "served"]
    for name in names:
        figures = doc["policies"][name]
        assert len(figures["entropy"]) == 5  # round 0 (the prefixes) + one per round
        assert len(figures["long_tail_share"]) == len(figures["utility"]) == 4
        assert all(0 <= s <= 1 for s in figures["long_tail_share"])
        assert isinstance(figures["settings"], dict) and "summary" in figures
        assert figures["sources"] == {"model": 40}
    assert doc["policies"]["model"]["settings"]["rerank"] is False
    assert doc["policies"]["served"]["settings"] == {}
    assert set(doc["targets"]) == {"served_entropy_end >= 0.8 x start", "served_entropy_end >= model's",
                                   "served_utility >= 0.95 x model's"}  # fmt: skip


def test_consumed_items_come_from_the_offered_list_and_reach_the_store(simulated, rec):
    sim = Simulation(rec, TINY)
    prefix = [len(u.rows) for u in sim.users]
    for figures in simulated["policies"].values():
        for r, step in enumerate(figures.get("trace", []), start=1):
            for offered, consumed in zip(step["offered"], step["consumed"], strict=True):
                assert len(offered) == TINY.k and consumed in offered
            assert step["stored"] == [n + r for n in prefix]  # one live event per user per round


def test_starting_entropy_and_tail_share_by_recomputation(simulated, rec):
    sim = Simulation(rec, TINY)
    start = np.mean([recent_entropy(u.rows, sim.weights, TINY.window) for u in sim.users])
    assert simulated["starting_entropy"] == pytest.approx(start)
    model = simulated["policies"]["model"]
    # the final entropy and tail share from the consumed ids in the trace
    histories = [list(u.rows) for u in sim.users]
    for step in model["trace"]:
        for h, item in zip(histories, step["consumed"], strict=True):
            h.append(sim.row_of[item])
    final = np.mean([recent_entropy(h, sim.weights, TINY.window) for h in histories])
    assert model["entropy"][-1] == pytest.approx(final)
    last = [sim.tail[sim.row_of[i]] for i in model["trace"][-1]["consumed"]]
    assert model["long_tail_share"][-1] == pytest.approx(np.mean(last))


def test_deterministic_under_its_seed(simulated, rec):
    names = {name: POLICIES[name] for name in ("model", "explore" if KNOBS else "served")}
    again = run_simulation(rec, TINY, names, trace=True)
    for name in names:
        for key in ("entropy", "long_tail_share", "utility", "trace"):
            assert again["policies"][name][key] == simulated["policies"][name][key], (name, key)
    other = run_simulation(rec, dataclasses.replace(TINY, seed=2), {"model": POLICIES["model"]}, trace=True)
    assert other["policies"]["model"]["trace"] != simulated["policies"]["model"]["trace"]


def test_cli_writes_json_and_png_without_torch(run_and_bundle, tmp_path):
    code = ("import sys; from twotower.cli.simulate_feedback import main; main(); "
            "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, f"bundle={run_and_bundle[1]}", f"out={tmp_path}",
                           "users=5", "rounds=2", "only=[model,served]"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("[]"), proc.stdout  # no torch in the process
    doc = json.loads((tmp_path / "simulation.json").read_text())
    assert doc["rounds"] == 2 and doc["users"] == 5 and set(doc["policies"]) == {"model", "served"}
    assert (tmp_path / "simulation.png").read_bytes()[:4] == b"\x89PNG"
