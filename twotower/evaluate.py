"""Full-catalog evaluation shared by the model and the baselines.

A scorer (:mod:`twotower.scorers`) maps an evaluation batch (see :class:`~twotower.data.sequences.EvalQueries`)
to a (B, N) score matrix whose column j is item index j + 1. Every item the user had before the target is
masked, the target's rank over the whole remaining catalog gives Recall/NDCG/MRR, and the top-10 lists give
coverage, Gini of exposure, novelty, diversity and miscalibration.

The ranking step runs in torch by default (:mod:`twotower.ranking`, on the device a model scorer scores on,
in catalog chunks of B x ``chunk_items`` scores; only ranks and top-k columns reach the host) or in numpy
(``ranker="numpy"``, the exact twin: the same scores copied to the host). Both give the same metrics: ties
count against the model in the ranks and go to the lower column in the top-k lists.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch.profiler import record_function
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from twotower import metrics
from twotower.data.sequences import EvalQueries
from twotower.ranking import ScoreChunk, rank_top
from twotower.scorers import IntentScorer, ModelScorer, ScaledScorer, Scorer

__all__ = [
    "IntentScorer",
    "ModelScorer",
    "ScaledScorer",
    "Scorer",
    "best_on_validation",
    "evaluate_scorer",
    "mask_history",
]

log = logging.getLogger(__name__)

KS = (10, 20, 50, 100)
TOP = 10  # the list length beyond-accuracy metrics see
MAX_BATCH_SCORES = 1 << 25  # scores one ranking step may hold (B x chunk), unless chunk_items says otherwise
RANKERS = ("torch", "numpy")


class ListChooser(Protocol):
    """The served list re-rank (:class:`twotower.served.ListReranker`)."""

    depth: int  # candidates it reads per query

    def __call__(self, scores: np.ndarray, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """(B, N) served scores (history at -inf) -> (B, L) the lists' columns, -1 where short."""

    def choose(self, top: np.ndarray, top_scores: np.ndarray, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """(B, M) best columns and their scores (-inf / NaN = none) -> (B, L) the lists' columns."""


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
    target_scores = scores[np.arange(len(targets)), targets]  # (B,)
    return _list_ranks(targets, target_scores, ranks, lists, lambda b, chosen: scores[b, chosen])


def _list_ranks(
    targets: np.ndarray,
    target_scores: np.ndarray,
    ranks: np.ndarray,
    lists: np.ndarray,
    chosen_scores: Callable[[int, np.ndarray], np.ndarray],
) -> np.ndarray:
    """The loop both re-ranked rank functions share; ``chosen_scores(b, chosen)``: row b's chosen items' scores."""
    out = ranks.astype(np.float64).copy()
    for b in range(len(targets)):
        chosen = lists[b][lists[b] >= 0]
        where = np.flatnonzero(chosen == targets[b])
        if len(where):
            out[b] = where[0] + 1
        elif np.isfinite(ranks[b]):
            above = int(
                (chosen_scores(b, chosen) >= target_scores[b]).sum()
            )  # chosen items that outranked it
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
    reranker: ListChooser | None = None,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The twin of :func:`rank_batch_numpy` in torch: a model scorer's scores stay on its device (scored chunk
    by chunk when ``chunk_items`` < N); the served re-rank reads the best ``reranker.depth`` candidates only.
    A host scorer's (B, N) numpy scores (the baselines) are ranked on ``device`` (None: the CPU)."""
    scores: torch.Tensor | ScoreChunk
    if hasattr(scorer, "chunks") and chunk_items is not None and chunk_items < n_items:
        scores = scorer.chunks(batch)  # type: ignore[attr-defined]
    elif hasattr(scorer, "scores"):
        scores = _checked(scorer.scores(batch), batch, n_items)  # type: ignore[attr-defined]  # (B, N)
    else:
        scores = _checked(_host_scores(scorer(batch), torch.device(device or "cpu")), batch, n_items)
    device = getattr(
        scorer, "device", scores.device if isinstance(scores, torch.Tensor) else torch.device("cpu")
    )
    # non-blocking (from the loader's pinned pages on a GPU): a blocking copy waits for the queued work
    exclude = batch["exclude"].to(device, non_blocking=True) if exclude_history else None
    columns = batch["targets"].to(device, non_blocking=True) - 1  # (B,) the targets' catalog columns
    depth = TOP if reranker is None else max(TOP, reranker.depth)
    with _one_thread_on_cpu(device, scores):
        ranked = rank_top(scores, columns, exclude, depth, chunk_items, n_items)
    assert ranked.top is not None and ranked.top_scores is not None
    ranks, top = ranked.ranks.cpu().numpy(), ranked.top.cpu().numpy()  # (B,), (B, depth)
    if reranker is None:
        return ranks, top[:, :TOP]
    top_scores = ranked.top_scores.cpu().numpy()  # (B, depth)
    lists = reranker.choose(top, top_scores, batch)  # (B, LIST_K)
    targets = batch["targets"].numpy() - 1
    target_scores = ranked.target_scores.cpu().numpy()
    return (
        reranked_ranks_from_top(top, top_scores, targets, target_scores, ranks, lists),
        _fill(lists, top[:, :TOP]),
    )


def _host_scores(scores: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host scorer's (B, N) scores as a float32 tensor on ``device``. A row broadcast to every query
    (popularity) travels once and is expanded there: a (B, N) copy per batch would bound a GPU's ranking by
    the host link."""
    host = np.asarray(scores, dtype=np.float32)
    with warnings.catch_warnings():  # the ranking never writes into its scores: no copy of a read-only view
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if device.type == "cpu":
            return torch.from_numpy(host)
        if host.ndim == 2 and host.strides[0] == 0:  # (B, N) broadcast of one (N,) row
            return torch.from_numpy(host[:1]).to(device).expand(host.shape[0], host.shape[1])
        return torch.from_numpy(host).to(device)


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device, scores: torch.Tensor | ScoreChunk) -> Iterator[None]:
    """On the CPU, rank (B, N) score tensors with one intra-op thread: the passes are memory-bound, and a
    thread pool stalls on its barriers whenever another process holds a core (a shared machine). A chunk
    source scores inside the ranking: its matrix products keep every thread."""
    if device.type != "cpu" or not isinstance(scores, torch.Tensor):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reranked_ranks_from_top(
    top: np.ndarray,
    top_scores: np.ndarray,
    targets: np.ndarray,
    target_scores: np.ndarray,
    ranks: np.ndarray,
    lists: np.ndarray,
) -> np.ndarray:
    """:func:`reranked_ranks` from the (B, M) best columns and their scores rather than the (B, N) scores
    (the chosen items are among them)."""
    return _list_ranks(
        targets, target_scores, ranks, lists, lambda b, chosen: top_scores[b][np.isin(top[b], chosen)]
    )


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
    ranker: str = "torch",
    chunk_items: int | None = None,
    reranker: ListChooser | None = None,
    max_batch_scores: int = MAX_BATCH_SCORES,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Rank every query's target against the whole catalog; returns ranking + beyond-accuracy metrics.

    ``categories`` (N, C) per catalog column adds intra-list diversity@10 and miscalibration@10 where the
    catalog has categories. ``ranker`` "torch" ranks with :mod:`twotower.ranking` in chunks of ``chunk_items``
    catalog columns (None: as many as keep a batch within ``max_batch_scores`` scores), "numpy" with the
    numpy twin; ``reranker``: the served list re-rank; ``num_workers``: processes collating the queries (a fast
    device waits on a single one); ``device``: where the torch ranker ranks a host scorer's scores (the
    baselines beside a model trained on a GPU; None: the CPU).
    """
    if ranker not in RANKERS:
        raise ValueError(f"ranker must be one of {RANKERS}, not {ranker!r}")
    chunk_items = chunk_items or auto_chunk(n_items, batch_size, max_batch_scores)
    members = _members(categories)
    mix = metrics.CategoryMix(members) if members is not None else None  # once: every batch's lists share it
    on_gpu = torch.device(getattr(scorer, "device", None) or device or "cpu").type == "cuda"
    loader = DataLoader(queries, batch_size=batch_size, shuffle=False, collate_fn=queries.collate,
                        num_workers=num_workers, pin_memory=on_gpu)  # fmt: skip
    ranks, tops, kls = [], [], []
    # the labelled phases are what a profile of the evaluation reports (twotower.benchmarks.profiling)
    batches = iter(tqdm(loader, desc=desc, leave=False, disable=len(loader) < 4))
    while True:
        with record_function("eval: next batch (collate)"):
            batch = next(batches, None)
        if batch is None:
            break
        with record_function("eval: score and rank"):
            if ranker == "torch":
                batch_ranks, top = rank_batch_torch(
                    scorer, batch, n_items, exclude_history, chunk_items, reranker, device
                )
            else:
                batch_ranks, top = rank_batch_numpy(scorer, batch, n_items, exclude_history, reranker)
        ranks.append(batch_ranks)
        tops.append(top)
        if mix is not None:  # the history the model reads (its window) against the list
            with record_function("eval: miscalibration (host)"):
                kls.append(metrics.miscalibration(top[:, :TOP], batch["items"].numpy() - 1, mix=mix))
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    top_lists = np.concatenate(tops) if tops else np.zeros((0, TOP), dtype=np.int64)
    out: dict[str, Any] = metrics.ranking_metrics(all_ranks, ks)
    out.update(metrics.beyond_accuracy(top_lists, n_items, popularity, k=TOP, categories=categories,
                                       miscalibrations=np.concatenate(kls) if kls else None))  # fmt: skip
    out["queries"] = len(all_ranks)
    return out


def best_on_validation(
    name: str, candidates: Iterable[Scorer], queries: Any, **common: Any
) -> tuple[Scorer | None, dict[str, Any] | None]:
    """The candidate (a baseline with ``params``) with the best validation NDCG@10, the first on a tie, and its
    validation metrics; (None, None) without candidates. ``common``: :func:`evaluate_scorer`'s settings."""
    best, best_val = None, None
    for candidate in candidates:
        val = evaluate_scorer(candidate, queries, desc=f"{name} val", **common)
        log.info("baseline %s %s: val ndcg@10 %.4f", name, candidate.params, val["ndcg@10"])
        if best_val is None or val["ndcg@10"] > best_val["ndcg@10"]:
            best, best_val = candidate, val
    return best, best_val


def auto_chunk(n_items: int, batch_size: int, max_batch_scores: int = MAX_BATCH_SCORES) -> int:
    """Catalog columns per ranking step so that a batch holds at most ``max_batch_scores`` scores."""
    return max(1, min(n_items, max_batch_scores // max(batch_size, 1)))


def _members(categories: np.ndarray | None) -> np.ndarray | None:
    """(N, C_max) category indices per column (0 = none) -> (N, C) bool membership; None without categories.
    Vectorised (a catalog of a million items is one scatter, not a loop over its rows)."""
    if categories is None or not categories.any():
        return None
    members = np.zeros((len(categories), int(categories.max()) + 1), dtype=bool)  # (N, C)
    rows = np.broadcast_to(np.arange(len(categories))[:, None], categories.shape)  # (N, C_max)
    real = categories > 0  # 0 is no category (padding), never a column of its own
    members[rows[real], categories[real]] = True
    return members
