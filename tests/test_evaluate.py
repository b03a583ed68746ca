"""The shared evaluation loop: oracle, history masking, NaN scorer."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.data.sequences import EvalQueries, SequenceArrays
from twotower.evaluate import evaluate_scorer, mask_history


def _queries(data, split):
    return EvalQueries(data, split, "test", SequenceArrays.from_log(data), max_len=10)


def _popularity(data):
    return np.full(data.n_items, 0.5)


def test_oracle_scores_perfectly(tiny_data, tiny_split):
    def oracle(batch):
        scores = np.zeros((len(batch["targets"]), tiny_data.n_items))
        scores[np.arange(len(scores)), batch["targets"].numpy() - 1] = 1.0
        return scores

    queries = _queries(tiny_data, tiny_split)
    result = evaluate_scorer(oracle, queries, tiny_data.n_items, _popularity(tiny_data))
    # a target the user already had is masked with the history, so the oracle hits exactly the others
    fresh = np.mean([queries.targets[i] not in queries.history_items(i) for i in range(len(queries))])
    assert 0 < fresh < 1
    assert result["recall@10"] == pytest.approx(fresh) and result["mrr"] == pytest.approx(fresh)
    assert result["queries"] == tiny_data.n_users
    unmasked = evaluate_scorer(
        oracle, queries, tiny_data.n_items, _popularity(tiny_data), exclude_history=False
    )
    assert unmasked["recall@10"] == 1.0 and unmasked["ndcg@10"] == 1.0


def test_constant_and_nan_scorers_never_hit(tiny_data, tiny_split):
    queries = _queries(tiny_data, tiny_split)
    flat = evaluate_scorer(lambda b: np.zeros((len(b["targets"]), tiny_data.n_items)), queries,
                           tiny_data.n_items, _popularity(tiny_data))  # fmt: skip
    # all ties: the target ranks last among the unmasked items, so only tiny catalogs reach the top 10
    assert flat["recall@10"] <= 0.05
    nan = evaluate_scorer(lambda b: np.full((len(b["targets"]), tiny_data.n_items), np.nan), queries,
                          tiny_data.n_items, _popularity(tiny_data))  # fmt: skip
    assert nan["recall@100"] == 0.0 and nan["mrr"] == 0.0


def test_mask_history():
    scores = np.zeros((2, 5), dtype=np.float32)
    mask_history(scores, np.array([[1, 3, 0], [5, 0, 0]]))
    assert np.isneginf(scores).tolist() == [[True, False, True, False, False], [False] * 4 + [True]]


def test_every_seen_item_is_excluded_even_beyond_the_model_window(tiny_data, tiny_split):
    """The model reads the last ``max_len`` events, but every item the user had before the target is masked:
    a scorer that puts all of them above the target still ranks each fresh target first."""
    queries = _queries(tiny_data, tiny_split)
    offsets = tiny_data.user_offsets

    def seen(i: int) -> np.ndarray:  # the user's items before the target, read from the log itself
        return tiny_data.items[offsets[queries.users[i]] : queries.positions[i]]

    def seen_first(batch):
        scores = np.zeros((len(batch["targets"]), tiny_data.n_items))
        for row, (i, target) in enumerate(
            zip(batch["index"].tolist(), batch["targets"].tolist(), strict=True)
        ):
            scores[row, target - 1] = 1.0
            scores[row, seen(i) - 1] = 2.0  # a seen target stays masked, as the oracle test expects
        return scores

    long = [
        i
        for i in range(len(queries))
        if len(np.setdiff1d(seen(i)[: -queries.max_len], seen(i)[-queries.max_len :]))
    ]
    assert len(long) >= 10  # users with items seen only before the window: what this test is about
    fresh = np.mean([queries.targets[i] not in seen(i) for i in range(len(queries))])
    result = evaluate_scorer(seen_first, queries, tiny_data.n_items, _popularity(tiny_data), ks=(1,))
    assert result["recall@1"] == pytest.approx(fresh)


def test_a_broadcast_host_row_travels_once_and_is_expanded_on_the_device():
    """Popularity's (B, N) broadcast goes to the ranking device as one (N,) row (no (B, N) copy per batch); a
    plain matrix goes whole. `meta` stands in for a GPU: same placement, no data."""
    import torch

    from twotower.evaluate import _host_scores

    row = np.arange(5, dtype=np.float32)
    broadcast = np.broadcast_to(row, (3, 5))
    on_device = _host_scores(broadcast, torch.device("meta"))
    assert on_device.shape == (3, 5) and on_device.device.type == "meta" and on_device.stride(0) == 0
    dense = _host_scores(np.ones((3, 5)), torch.device("meta"))
    assert dense.shape == (3, 5) and dense.stride(0) == 5 and dense.dtype == torch.float32
    on_cpu = _host_scores(broadcast, torch.device("cpu"))
    assert np.array_equal(on_cpu.numpy(), broadcast)


def test_a_host_scorer_ranked_on_a_named_device_matches_the_numpy_twin(tiny_data, tiny_split):
    """A baseline's scores ranked by the torch ranker on the device passed (the model's) give the numpy
    twin's metrics; popularity's broadcast row among them."""
    from twotower.baselines import Popularity, interaction_matrix

    pop = Popularity(interaction_matrix(tiny_data, tiny_split))
    queries = _queries(tiny_data, tiny_split)
    common = {"n_items": tiny_data.n_items, "popularity": _popularity(tiny_data), "batch_size": 7}
    on_device = evaluate_scorer(pop, queries, ranker="torch", device="cpu", **common)
    twin = evaluate_scorer(pop, queries, ranker="numpy", **common)
    from twotower.benchmarks.train import differing

    assert on_device["queries"] == twin["queries"] > 0
    assert differing(on_device, twin) == []
