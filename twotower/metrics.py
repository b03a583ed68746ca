"""Ranking and beyond-accuracy metrics in numpy (checked against hand-computed values in the tests).

Conventions: one target per query; rank 1 is best; ties count against the model (an item scoring exactly as
the target is ranked above it); a NaN target score is never a hit (rank = inf); NaN scores of other items
never outrank anything.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from serving.core.diversify import category_weights, kl_divergence

DECILES = 10


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """scores (B, N), targets (B,) column indices -> (B,) float ranks (1 = best, inf = never a hit)."""
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]  # (B,)
    with np.errstate(invalid="ignore"):
        at_least = (scores >= target_scores[:, None]).sum(axis=1)  # (B,) includes the target itself
    ranks = at_least.astype(np.float64)
    ranks[np.isnan(target_scores) | np.isneginf(target_scores)] = np.inf
    return ranks


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose single target is in the top k (hit rate)."""
    return float(np.mean(ranks <= k)) if len(ranks) else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 1) inside the top k, else 0."""
    if not len(ranks):
        return 0.0
    gains = np.where(ranks <= k, 1.0 / np.log2(np.minimum(ranks, 1e300) + 1.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full catalog (0 for a never-hit target)."""
    return float(np.mean(1.0 / ranks)) if len(ranks) else 0.0


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, N) -> (B, k) column indices of the best scores, best first; NaN and -inf never beat a real score.

    Ties go to the lower column (in the list and at its k-th place), as :mod:`twotower.ranking` breaks them, so
    both rankers give the same lists."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((len(scores), 0), dtype=np.int64)
    clean = np.where(np.isnan(scores), -np.inf, scores)
    part = np.argpartition(-clean, k - 1, axis=1)[:, :k]  # (B, k) unordered
    values = np.take_along_axis(clean, part, axis=1)  # (B, k)
    kth = values.min(axis=1)  # (B,)
    crossing = (clean >= kth[:, None]).sum(axis=1) > k  # (B,) items tied at the k-th score left out
    for b in np.flatnonzero(crossing):  # keep the lowest columns of the tie
        above = np.flatnonzero(clean[b] > kth[b])
        part[b] = np.concatenate([above, np.flatnonzero(clean[b] == kth[b])[: k - len(above)]])
        values[b] = clean[b, part[b]]
    order = np.lexsort((part, -values), axis=1)  # score desc, then column asc
    return np.take_along_axis(part, order, axis=1)


def catalog_coverage(top_lists: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one list."""
    return float(len(np.unique(top_lists)) / n_items) if n_items else 0.0


def gini_exposure(top_lists: np.ndarray, n_items: int) -> float:
    """Gini coefficient of how often each catalog item is recommended (0 = even, 1 = one item gets all)."""
    counts = np.sort(np.bincount(top_lists.ravel(), minlength=n_items)[:n_items]).astype(np.float64)
    total = counts.sum()
    if total == 0 or n_items < 2:
        return 0.0
    index = np.arange(1, n_items + 1)
    return float(np.sum((2 * index - n_items - 1) * counts) / (n_items * total))


def novelty(top_lists: np.ndarray, item_popularity: np.ndarray) -> float:
    """Mean self-information -log2 p(i) of recommended items; p = share of training users who had the item."""
    return float(np.mean(-np.log2(item_popularity[top_lists]))) if top_lists.size else 0.0


def user_popularity(item_user_counts: np.ndarray, n_users: int) -> np.ndarray:
    """Smoothed p(i) = (users with i + 1) / (users + 1), so unseen items have finite novelty."""
    return (item_user_counts + 1.0) / (n_users + 1.0)


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20, 50, 100)) -> dict[str, float]:
    """Recall@k and NDCG@k for each k, and MRR, from (B,) ranks: the one place validation (ranks ranked in
    torch, see :mod:`twotower.ranking`) and evaluation (numpy or torch) turn ranks into figures."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    out["mrr"] = mrr(ranks)
    return out


def intra_list_diversity(top_lists: np.ndarray, categories: np.ndarray) -> float:
    """Mean over lists of the mean pairwise category distance 1 - Jaccard(cats(i), cats(j)).

    ``categories`` is (N, C) category indices per catalog column, 0 = padding. Items without categories
    count as distance 1 from everything.
    """
    b, k = top_lists.shape
    if k < 2 or b == 0:
        return 0.0
    n_cat = int(categories.max()) + 1
    onehot = np.zeros((len(categories), n_cat), dtype=np.float32)
    rows = np.repeat(np.arange(len(categories)), categories.shape[1])
    onehot[rows, categories.ravel()] = 1.0
    onehot[:, 0] = 0.0
    sets = onehot[top_lists]  # (B, k, n_cat)
    inter = np.einsum("bic,bjc->bij", sets, sets)  # (B, k, k)
    sizes = sets.sum(-1)  # (B, k)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    jaccard = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    off = ~np.eye(k, dtype=bool)
    return float(np.mean((1.0 - jaccard)[:, off]))


def popularity_deciles(popularity: np.ndarray) -> np.ndarray:
    """(N,) item popularity -> (N,) decile 0..9 of the catalog by popularity (0 = the least popular tenth of
    the items, 9 = the most popular; ties keep catalog order)."""
    order = np.argsort(popularity, kind="stable")
    deciles = np.empty(len(popularity), dtype=np.int64)
    deciles[order] = np.arange(len(popularity)) * DECILES // max(len(popularity), 1)
    return deciles


def exposure_by_decile(
    columns: np.ndarray, popularity: np.ndarray, weights: np.ndarray | None = None
) -> list[float]:
    """Share of recommendations (or, with ``weights``, of interactions) landing in each popularity decile."""
    counts = np.bincount(popularity_deciles(popularity)[columns.ravel()], weights=weights, minlength=DECILES)
    total = counts.sum()
    return (counts / total).round(6).tolist() if total else [0.0] * DECILES


class CategoryMix:
    """The category mix of many item lists at once, for a catalog's (N, C) bool membership: an item spreads
    1 / |its categories| over them. Built once per catalog as a sparse (N, C) matrix of those shares; a batch
    of lists is one sparse product, not a gather of (B, L, C) dense weights."""

    def __init__(self, members: np.ndarray) -> None:
        self.shares = sp.csr_matrix(category_weights(members))  # (N, C) float64
        self.n_items, self.n_categories = members.shape

    def __call__(self, lists: np.ndarray) -> np.ndarray:
        """(B, L) catalog columns (-1 = padding) -> (B, C) float64 summed category shares."""
        valid = lists >= 0  # (B, L)
        rows = np.broadcast_to(np.arange(len(lists))[:, None], lists.shape)[valid]  # (V,)
        counts = sp.csr_matrix(
            (np.ones(len(rows)), (rows, lists[valid])), shape=(len(lists), self.n_items)
        )  # (B, N) how often each list holds each item
        return np.asarray((counts @ self.shares).todense())  # (B, C)


def miscalibration(
    top_lists: np.ndarray,
    histories: np.ndarray,
    members: np.ndarray | None = None,
    mix: CategoryMix | None = None,
) -> np.ndarray:
    """Steck's miscalibration per list: KL(p || 0.99 q + 0.01 p) between the category mix ``p`` of the history
    and ``q`` of the list, an item spreading 1 / |its categories| over them.

    top_lists (B, k) and histories (B, H) are catalog columns (-1 = padding); members (N, C) bool, or ``mix``
    built from them once (an evaluation's batches share it). Returns (B,) KL, NaN where the history has no
    category (nothing to be calibrated to)."""
    if mix is None:
        if members is None:
            raise ValueError("miscalibration needs the catalog's members or a CategoryMix of them")
        mix = CategoryMix(members)
    q = mix(top_lists)  # (B, C)
    q /= np.maximum(q.sum(1, keepdims=True), 1e-12)
    p = mix(histories)  # (B, C)
    mass = p.sum(1, keepdims=True)  # (B, 1)
    p = p / np.maximum(mass, 1e-12)
    return np.where(mass[:, 0] > 0, kl_divergence(p, q), np.nan)


def beyond_accuracy(
    top_lists: np.ndarray,
    n_items: int,
    popularity: np.ndarray,
    k: int = 10,
    categories: np.ndarray | None = None,
    miscalibrations: np.ndarray | None = None,
) -> dict[str, float]:
    """Coverage, Gini of exposure, novelty, exposure by popularity decile; with categories, intra-list
    diversity; ``miscalibrations`` (Q,) per-query KL (see :func:`miscalibration`) are averaged in."""
    lists = top_lists[:, :k]
    out = {
        f"coverage@{k}": catalog_coverage(lists, n_items),
        f"gini@{k}": gini_exposure(lists, n_items),
        f"novelty@{k}": novelty(lists, popularity),
        f"exposure_by_popularity_decile@{k}": exposure_by_decile(lists, popularity),
    }
    if categories is not None and categories.any():
        out[f"diversity@{k}"] = intra_list_diversity(lists, categories)
    if miscalibrations is not None and np.isfinite(miscalibrations).any():
        out[f"miscalibration@{k}"] = float(np.nanmean(miscalibrations))
    return out
