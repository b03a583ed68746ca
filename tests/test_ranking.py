"""The torch ranking step (twotower.ranking) against its numpy twin, in chunks, and in validation."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from serving.core.listsettings import ListSettings
from twotower import metrics
from twotower.data.sequences import EvalQueries, SequenceArrays
from twotower.evaluate import ModelScorer, evaluate_scorer, mask_history
from twotower.lit_module import TwoTowerModule
from twotower.losses import SoftmaxLoss
from twotower.model import TwoTower
from twotower.model_config import ModelConfig
from twotower.ranking import mask_history as mask_history_torch
from twotower.ranking import rank_targets

CHUNKS = [None, 1, 3, 16, 36, 37, 100]


def tied_batch(seed: int, b: int = 9, n: int = 37, h: int = 6):
    """Integer scores (many ties), a few NaNs and infinities, histories that sometimes hold the target."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, (b, n)).astype(np.float32)  # (B, N)
    scores[rng.random((b, n)) < 0.05] = np.nan
    scores[rng.random((b, n)) < 0.02] = np.inf
    targets = rng.integers(0, n, b)  # (B,) columns
    exclude = np.zeros((b, h), np.int64)  # (B, H) item indices, 0 = pad
    exclude[:, :4] = rng.integers(1, n + 1, (b, 4))
    exclude[0, 4] = targets[0] + 1  # a repeated target is masked with the history: never a hit
    exclude[1, 4] = exclude[1, 0]  # a history item seen twice
    scores[2, targets[2]] = np.nan
    return scores, targets, exclude


def numpy_twin(scores: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None, k: int = 10):
    masked = scores.copy() if exclude is None else mask_history(scores.copy(), exclude)
    return metrics.target_ranks(masked, targets), metrics.top_k(masked, k), masked


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("masked", [True, False])
def test_torch_ranks_equal_numpy_with_ties_and_history(seed, masked):
    scores, targets, exclude = tied_batch(seed)
    exclude = exclude if masked else None
    ranks, _, _ = numpy_twin(scores, targets, exclude)
    for chunk_items in CHUNKS:
        got, _ = rank_targets(
            torch.from_numpy(scores),
            torch.from_numpy(targets),
            None if exclude is None else torch.from_numpy(exclude),
            chunk_items=chunk_items,
        )
        assert got.dtype == torch.float64
        np.testing.assert_array_equal(got.numpy(), ranks)
    assert not masked or math.isinf(ranks[0])  # the repeated target


@pytest.mark.parametrize("seed", range(3))
def test_chunked_equals_unchunked_for_tensors_and_chunk_functions(seed):
    scores, targets, exclude = tied_batch(seed)
    full = torch.from_numpy(scores.copy())
    args = (torch.from_numpy(targets), torch.from_numpy(exclude))
    ranks, top = rank_targets(full, *args, k=10)
    calls = []

    def chunk(start: int, stop: int) -> torch.Tensor:
        calls.append((start, stop))
        return full[:, start:stop] * 1.0  # a fresh tensor, as a model would return

    for chunk_items in CHUNKS:
        for source in (full, chunk):
            got_ranks, got_top = rank_targets(source, *args, k=10, chunk_items=chunk_items, n_items=37)
            assert torch.equal(got_ranks, ranks) and torch.equal(got_top, top)
    np.testing.assert_array_equal(full.numpy(), scores)  # masking copied: the caller's scores are left alone
    assert (0, 37) in calls and (0, 1) in calls


def test_top_k_equals_numpy_and_breaks_ties_towards_the_lower_column():
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((12, 50)).astype(np.float32)  # no ties
    targets = rng.integers(0, 50, 12)
    exclude = rng.integers(0, 51, (12, 8))
    _, expected, _ = numpy_twin(scores, targets, exclude, k=10)
    for chunk_items in (None, 4, 11):
        _, top = rank_targets(
            torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(exclude), 10, chunk_items
        )
        np.testing.assert_array_equal(top.numpy(), expected)
    # with ties the lists are numpy's: tied items in column order, at the k-th place too
    scores, targets, exclude = tied_batch(0)
    _, expected, masked = numpy_twin(scores, targets, exclude, k=10)
    clean = np.where(np.isnan(masked), -np.inf, masked)
    _, top = rank_targets(
        torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(exclude), 10, 5
    )
    np.testing.assert_array_equal(top.numpy(), expected)  # both break ties towards the lower column
    got_scores = np.take_along_axis(clean, top.numpy(), 1)
    np.testing.assert_array_equal(got_scores, np.take_along_axis(clean, expected, 1))
    for row_scores, row_top in zip(got_scores, top.numpy(), strict=True):
        pairs = zip(row_scores, row_scores[1:], row_top, row_top[1:], strict=False)
        assert all(a > b or (a == b and i < j) for a, b, i, j in pairs)
    # -0.0 ties with 0.0; NaN never beats a real score; k beyond the catalog gives the whole catalog
    odd = torch.tensor([[0.0, -0.0, float("nan"), -1.0]])
    _, top = rank_targets(odd, torch.tensor([0]), k=10)
    assert top.tolist() == [[0, 1, 3, 2]]


def test_mask_history_equals_numpy_per_chunk():
    scores, _, exclude = tied_batch(1)
    expected = mask_history(scores.copy(), exclude)
    got = torch.cat(
        [
            mask_history_torch(torch.from_numpy(scores[:, a : a + 8]), torch.from_numpy(exclude), a)
            for a in range(0, 37, 8)
        ],
        dim=1,
    )
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_target_exactly_at_rank_k_is_a_hit_and_one_tie_more_is_not(k):
    """k - 1 items above the target: rank k, a hit at k; one more item tied with it: rank k + 1, a miss."""
    n = k + 4
    at_k = np.zeros((1, n), np.float32)
    at_k[0, 1:k] = 2.0  # k - 1 better items
    at_k[0, 0] = 1.0  # the target
    tied = at_k.copy()
    tied[0, n - 1] = 1.0  # ties count against the model
    target = np.array([0])
    for scores, rank in ((at_k, k), (tied, k + 1)):
        numpy_ranks = metrics.target_ranks(scores, target)
        torch_ranks, _ = rank_targets(torch.from_numpy(scores), torch.from_numpy(target))
        assert numpy_ranks.tolist() == torch_ranks.tolist() == [float(rank)]
        figures = metrics.ranking_metrics(numpy_ranks, (k,))
        hit = rank <= k
        assert figures[f"recall@{k}"] == (1.0 if hit else 0.0)
        assert figures[f"ndcg@{k}"] == pytest.approx(1 / math.log2(k + 1) if hit else 0.0)
        assert figures["mrr"] == pytest.approx(1 / rank)
    # masking an item above the target lifts it back to rank k
    exclude = torch.tensor([[n]])  # item index n = column n - 1, the tie
    assert rank_targets(torch.from_numpy(tied), torch.from_numpy(target), exclude)[0].tolist() == [float(k)]


def test_chunk_function_needs_n_items():
    with pytest.raises(ValueError, match="n_items"):
        rank_targets(lambda a, b: torch.zeros(1, b - a), torch.tensor([0]))


@pytest.fixture(scope="module")
def tiny_model(tiny_data):
    torch.manual_seed(0)
    config = ModelConfig(
        n_items=tiny_data.n_items,
        n_categories=tiny_data.n_categories,
        max_categories=tiny_data.item_categories.shape[1],
        n_events=tiny_data.n_events,
        dim=16,
        max_len=10,
        dropout=0.0,
        use_time=tiny_data.has_time,
    )
    return TwoTower(config, torch.from_numpy(tiny_data.item_categories)).eval()


@pytest.fixture(scope="module")
def val_queries(tiny_data, tiny_split):
    return EvalQueries(tiny_data, tiny_split, "val", SequenceArrays.from_log(tiny_data), max_len=10)


def evaluate(scorer, queries, data, **kwargs) -> dict[str, float]:
    popularity = np.full(data.n_items, 0.5)
    return evaluate_scorer(scorer, queries, data.n_items, popularity, batch_size=16, **kwargs)


@pytest.mark.parametrize("eval_chunk_items", [None, 7])
def test_validation_metrics_equal_the_numpy_evaluation(tiny_model, val_queries, tiny_data, eval_chunk_items):
    optimizer = functools.partial(torch.optim.Adam, lr=1e-3)
    module = TwoTowerModule(tiny_model, SoftmaxLoss(), optimizer, eval_chunk_items=eval_chunk_items)
    loader = DataLoader(val_queries, batch_size=16, collate_fn=val_queries.collate)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    logged = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    expected = evaluate(ModelScorer(tiny_model), val_queries, tiny_data, ks=(10,))
    assert set(logged) == {"val/recall@10", "val/ndcg@10", "val/mrr"}
    for name in ("recall@10", "ndcg@10", "mrr"):
        assert logged[f"val/{name}"] == pytest.approx(expected[name], rel=1e-6, abs=1e-7)
    assert 0 < expected["mrr"] < 1


def test_evaluate_scorer_torch_ranker_equals_numpy(tiny_model, val_queries, tiny_data):
    """The default torch ranker and its numpy twin give the same metrics dict, chunked or not, ties included."""
    model = ModelScorer(tiny_model)
    categories = tiny_data.item_categories[1:]
    expected = evaluate(model, val_queries, tiny_data, ranker="numpy", categories=categories)
    assert "diversity@10" in expected and "miscalibration@10" in expected
    for chunk_items in (None, 9, 1000):
        got = evaluate(
            model, val_queries, tiny_data, ranker="torch", chunk_items=chunk_items, categories=categories
        )
        assert got == expected, chunk_items

    def tied(batch):  # integer scores: ties everywhere, at the 10th place too
        return np.asarray(model(batch)).round()

    numpy_figures = evaluate(tied, val_queries, tiny_data, ranker="numpy", categories=categories)
    assert evaluate(tied, val_queries, tiny_data, ranker="torch", categories=categories) == numpy_figures
    with pytest.raises(ValueError, match="ranker"):
        evaluate(model, val_queries, tiny_data, ranker="jax")


@pytest.mark.parametrize(
    "settings",
    [
        ListSettings(diversity=0.6),
        ListSettings(max_per_category=2, calibrate=0.4, depth=30),
        ListSettings(explore=0.3),
    ],
)
def test_served_evaluation_torch_top_candidates_equal_numpy(tiny_model, val_queries, tiny_data, settings):
    """The served re-rank fed the torch ranker's top ``depth`` candidates gives the numpy path's metrics (which
    hands it the (B, N) matrix), with the session-intent boost, scored whole or in chunks."""
    from serving.core.intent import CategoryIntent, IntentSettings
    from serving.core.intent import membership as member_table
    from twotower.evaluate import IntentScorer
    from twotower.served import ListReranker

    categories = tiny_data.item_categories[1:]
    n_categories = len(tiny_data.category_names)
    counts = np.bincount(tiny_data.items, minlength=tiny_data.n_items + 1)[1:].astype(np.float64)
    intent = CategoryIntent.build(member_table(categories.tolist(), n_categories), counts,
                                  tiny_data.category_names, IntentSettings())  # fmt: skip
    model = ModelScorer(tiny_model)
    scorer = IntentScorer(model, intent, scale=float(tiny_model.temperature))
    reranker = ListReranker(settings, model.item_vectors.numpy(), categories, n_categories, counts)
    expected = evaluate(
        scorer, val_queries, tiny_data, ranker="numpy", categories=categories, reranker=reranker
    )
    for chunk_items in (None, 11):
        got = evaluate(scorer, val_queries, tiny_data, ranker="torch", categories=categories, reranker=reranker,
                       chunk_items=chunk_items)  # fmt: skip
        assert got == expected, chunk_items
    plain = evaluate(scorer, val_queries, tiny_data, ranker="torch", categories=categories)
    assert plain != expected  # the re-rank changed the lists: the comparison above could fail


def test_chunks_bound_the_scores_held_at_once(tiny_model, val_queries, tiny_data):
    """With max_batch_scores below B x N the model is scored chunk by chunk: no (B, N) matrix is built."""
    model = ModelScorer(tiny_model)
    widths = []
    chunks = model.chunks

    def spy(batch):
        source = chunks(batch)

        def chunk(start, stop):
            out = source(start, stop)
            widths.append(out.shape[1])
            return out

        return chunk

    model.chunks = spy
    expected = evaluate(ModelScorer(tiny_model), val_queries, tiny_data, ranker="numpy")
    got = evaluate(model, val_queries, tiny_data, max_batch_scores=16 * 10)
    assert got == expected and widths and max(widths) == 10
