"""Full-catalog evaluation shared by the model and the baselines.

A scorer maps an evaluation batch (see :class:`~twotower.data.sequences.EvalQueries`) to a (B, N) score
matrix whose column j is item index j + 1. Every item the user had before the target is masked, the
target's rank over the whole remaining catalog gives Recall/NDCG/MRR, and the top-10 lists give coverage,
Gini of exposure and novelty.

The ranking step runs in numpy (the default: the reported figures) or in torch (:mod:`twotower.ranking`, on
the device a :class:`ModelScorer` scores on). Both give the same ranks; top-10 lists can differ only in
which of several items tied at the 10th score is kept (torch keeps the lowest column).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from serving.core.intent import CategoryIntent
from twotower import metrics
from twotower.data.sequences import EvalQueries
from twotower.model import TwoTower
from twotower.ranking import rank_targets

log = logging.getLogger(__name__)

Scorer = Callable[[dict[str, torch.Tensor]], np.ndarray]
KS = (10, 20, 50, 100)
TOP = 10  # the list length beyond-accuracy metrics see
ScoresT = TypeVar("ScoresT", np.ndarray, torch.Tensor)


def mask_history(scores: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Set the score of every history item (exclude (B, H) item indices, 0 = pad) to -inf, in place."""
    rows, cols = np.nonzero(exclude)
    scores[rows, exclude[rows, cols] - 1] = -np.inf
    return scores


def rank_batch_numpy(
    scorer: Scorer, batch: dict[str, torch.Tensor], n_items: int, exclude_history: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One batch's (B,) target ranks and (B, TOP) top lists, ranked in numpy."""
    scores = _checked(np.array(scorer(batch), dtype=np.float32, copy=True), batch, n_items)  # (B, N)
    if exclude_history:
        mask_history(scores, batch["exclude"].numpy())
    return metrics.target_ranks(scores, batch["targets"].numpy() - 1), metrics.top_k(scores, TOP)


def rank_batch_torch(
    scorer: Scorer,
    batch: dict[str, torch.Tensor],
    n_items: int,
    exclude_history: bool,
    chunk_items: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The twin of :func:`rank_batch_numpy` in torch: a :class:`ModelScorer`'s scores stay on its device."""
    if isinstance(scorer, ModelScorer):
        scores = scorer.scores(batch)  # (B, N) on the model's device
    else:
        scores = torch.from_numpy(np.asarray(scorer(batch), dtype=np.float32))  # (B, N)
    exclude = batch["exclude"] if exclude_history else None
    ranks, top = rank_targets(
        _checked(scores, batch, n_items), batch["targets"] - 1, exclude, TOP, chunk_items
    )
    assert top is not None
    return ranks.cpu().numpy(), top.cpu().numpy()


def _checked(scores: ScoresT, batch: dict[str, torch.Tensor], n_items: int) -> ScoresT:
    """The scorer's (B, N) scores, or an error naming the shape it returned instead."""
    if tuple(scores.shape) != (len(batch["targets"]), n_items):
        raise ValueError(
            f"scorer returned {tuple(scores.shape)}, expected ({len(batch['targets'])}, {n_items})"
        )
    return scores


def evaluate_scorer(
    scorer: Scorer,
    queries: EvalQueries,
    n_items: int,
    popularity: np.ndarray,
    ks: tuple[int, ...] = KS,
    batch_size: int = 256,
    exclude_history: bool = True,
    desc: str = "evaluate",
    categories: np.ndarray | None = None,
    ranker: str = "numpy",
    chunk_items: int | None = None,
) -> dict[str, float]:
    """Rank every query's target against the whole catalog; returns ranking + beyond-accuracy metrics.

    ``categories`` (N, C) per catalog column adds intra-list diversity@10 where the catalog has categories.
    ``ranker`` "torch" ranks with :mod:`twotower.ranking` (in chunks of ``chunk_items`` catalog columns).
    """
    if ranker not in ("numpy", "torch"):
        raise ValueError(f"ranker must be 'numpy' or 'torch', not {ranker!r}")
    loader = DataLoader(queries, batch_size=batch_size, shuffle=False, collate_fn=queries.collate)
    ranks, tops = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=len(loader) < 4):
        if ranker == "torch":
            batch_ranks, top = rank_batch_torch(scorer, batch, n_items, exclude_history, chunk_items)
        else:
            batch_ranks, top = rank_batch_numpy(scorer, batch, n_items, exclude_history)
        ranks.append(batch_ranks)
        tops.append(top)
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    top_lists = np.concatenate(tops) if tops else np.zeros((0, TOP), dtype=np.int64)
    out = metrics.ranking_metrics(all_ranks, ks)
    out.update(metrics.beyond_accuracy(top_lists, n_items, popularity, k=TOP, categories=categories))
    out["queries"] = len(all_ranks)
    return out


class ModelScorer:
    """Scores a batch with a :class:`TwoTower` (item vectors computed once, eval mode, no grad)."""

    def __init__(self, model: TwoTower, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.item_vectors = model.encode_items().to(self.device)  # (N, D)
        model.train(was_training)

    @torch.no_grad()
    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) float32 scores on the model's device."""
        was_training = self.model.training
        self.model.eval()
        inputs = [batch[k].to(self.device) for k in ("items", "events", "dwell", "gaps")]
        users = self.model.encode_user(*inputs)  # (B, D)
        scores = self.model.score(users, self.item_vectors)  # (B, N)
        self.model.train(was_training)
        return scores.float()

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self.scores(batch).cpu().numpy()


class IntentScorer:
    """The ranking a bundle serves: a model scorer's scores plus serving's session-intent boost
    (:mod:`serving.core.intent`) on every item, as an exact index serves it.

    ``scale`` turns the scorer's logits into serving's scores (the model's temperature: logits are
    cosine / temperature).
    """

    def __init__(self, scorer: Scorer, intent: CategoryIntent, scale: float = 1.0) -> None:
        self.scorer, self.intent, self.scale = scorer, intent, scale
        self.members = intent.members.astype(np.float32)  # (N, C)

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        scores = np.asarray(self.scorer(batch), dtype=np.float32) * self.scale  # (B, N)
        lift = self.intent.padded_lift(batch["items"].numpy())  # (B, C)
        return scores + self.intent.query_weights(lift) @ self.members.T  # (B, N)
