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
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from serving.core.intent import CategoryIntent, membership
from twotower import metrics
from twotower.data.sequences import EvalQueries
from twotower.model import TwoTower
from twotower.ranking import rank_targets

# (B, N) served scores (history at -inf) and the batch -> (B, L) the list's columns, -1 where short
ListChooser = Callable[[np.ndarray, dict[str, torch.Tensor]], np.ndarray]

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
    scorer: Scorer,
    batch: dict[str, torch.Tensor],
    n_items: int,
    exclude_history: bool,
    reranker: ListChooser | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One batch's (B,) target ranks and (B, TOP) top lists, ranked in numpy; ``reranker``: the served list
    re-rank chooses the first positions (:mod:`twotower.served`)."""
    scores = _checked(np.array(scorer(batch), dtype=np.float32, copy=True), batch, n_items)  # (B, N)
    if exclude_history:
        mask_history(scores, batch["exclude"].numpy())
    targets = batch["targets"].numpy() - 1
    ranks, top = metrics.target_ranks(scores, targets), metrics.top_k(scores, TOP)
    if reranker is None:
        return ranks, top
    lists = reranker(scores, batch)  # (B, LIST_K)
    return reranked_ranks(scores, targets, ranks, lists), _fill(lists, top)


def reranked_ranks(
    scores: np.ndarray, targets: np.ndarray, ranks: np.ndarray, lists: np.ndarray
) -> np.ndarray:
    """(B,) ranks of the targets in the served lists (B, L) followed by the rest by score.

    ``ranks`` are the targets' ranks by score alone (ties against the model, :func:`metrics.target_ranks`); a
    target outside its list ranks after it, among the items the list did not take."""
    out = ranks.astype(np.float64).copy()
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]  # (B,)
    for b in range(len(targets)):
        chosen = lists[b][lists[b] >= 0]
        where = np.flatnonzero(chosen == targets[b])
        if len(where):
            out[b] = where[0] + 1
        elif np.isfinite(ranks[b]):
            above = int((scores[b, chosen] >= target_scores[b]).sum())  # chosen items that outranked it
            out[b] = len(chosen) + ranks[b] - above
    return out


def _fill(lists: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(B, L) chosen columns (-1 where a list came short) completed from (B, T) columns by score."""
    if (lists >= 0).all():
        return lists[:, :TOP]
    out = lists[:, :TOP].copy()
    for b in np.flatnonzero((out < 0).any(1)):
        chosen = out[b][out[b] >= 0]
        rest = [c for c in top[b] if c not in set(chosen.tolist())][: TOP - len(chosen)]
        out[b] = np.concatenate([chosen, rest, np.full(TOP - len(chosen) - len(rest), top[b][0])])
    return out


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
    reranker: ListChooser | None = None,
) -> dict[str, Any]:
    """Rank every query's target against the whole catalog; returns ranking + beyond-accuracy metrics.

    ``categories`` (N, C) per catalog column adds intra-list diversity@10 and miscalibration@10 where the
    catalog has categories. ``ranker`` "torch" ranks with :mod:`twotower.ranking` (in chunks of
    ``chunk_items`` catalog columns); ``reranker`` (numpy ranker only): the served list re-rank.
    """
    if ranker not in ("numpy", "torch"):
        raise ValueError(f"ranker must be 'numpy' or 'torch', not {ranker!r}")
    if reranker is not None and ranker != "numpy":
        raise ValueError("the served list re-rank is evaluated with the numpy ranker")
    members = _members(categories)
    loader = DataLoader(queries, batch_size=batch_size, shuffle=False, collate_fn=queries.collate)
    ranks, tops, kls = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=len(loader) < 4):
        if ranker == "torch":
            batch_ranks, top = rank_batch_torch(scorer, batch, n_items, exclude_history, chunk_items)
        else:
            batch_ranks, top = rank_batch_numpy(scorer, batch, n_items, exclude_history, reranker)
        ranks.append(batch_ranks)
        tops.append(top)
        if members is not None:  # the history the model reads (its window) against the list
            kls.append(metrics.miscalibration(top[:, :TOP], batch["items"].numpy() - 1, members))
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    top_lists = np.concatenate(tops) if tops else np.zeros((0, TOP), dtype=np.int64)
    out: dict[str, Any] = metrics.ranking_metrics(all_ranks, ks)
    out.update(metrics.beyond_accuracy(top_lists, n_items, popularity, k=TOP, categories=categories,
                                       miscalibrations=np.concatenate(kls) if kls else None))  # fmt: skip
    out["queries"] = len(all_ranks)
    return out


def _members(categories: np.ndarray | None) -> np.ndarray | None:
    """(N, C_max) category indices per column (0 = none) -> (N, C) bool membership; None without categories."""
    if categories is None or not categories.any():
        return None
    return membership(categories.tolist(), int(categories.max()) + 1)


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


class ScaledScorer:
    """A scorer's logits in serving's units (cosine): times the model's temperature."""

    def __init__(self, scorer: Scorer, scale: float) -> None:
        self.scorer, self.scale = scorer, scale

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return np.asarray(self.scorer(batch), dtype=np.float32) * self.scale  # (B, N)


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
