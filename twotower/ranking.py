"""The ranking step in torch, the twin of the numpy one (:func:`twotower.evaluate.mask_history`,
:func:`twotower.metrics.target_ranks`, :func:`twotower.metrics.top_k`), so validation and evaluation can rank
on the device that holds the scores and bring only ranks and top-k lists to the host.

Conventions are :mod:`twotower.metrics`'s: column j is item index j + 1; history items are masked to -inf;
rank = number of unmasked items scoring >= the target (the target included, so ties count against the
model); a NaN or -inf (masked) target is never a hit (rank = inf); NaN scores never outrank anything.

The catalog is walked in chunks of ``chunk_items`` columns so no (B, N) temporary is needed beyond the
scores themselves (none at all when the scores come from a :data:`ScoreChunk`); every chunking gives the
same ranks and top-k lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

# (start, stop) -> (B, stop - start) scores of catalog columns start .. stop - 1; must be deterministic
# (a multi-chunk walk calls it twice per chunk: once for the target scores, once to count and rank).
ScoreChunk = Callable[[int, int], torch.Tensor]

_LOW = 0xFFFFFFFF  # low 32 bits of a top-k key: the inverted column


def mask_history(scores: torch.Tensor, exclude: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Copy of ``scores`` (B, C), columns start .. start + C - 1 of the catalog, with every history item
    (exclude (B, H) item indices, 0 = pad) at -inf; the input is left alone (it may be the caller's)."""
    rows, width = scores.shape
    cols = exclude - 1 - start  # (B, H) column within the chunk
    inside = (exclude > 0) & (cols >= 0) & (cols < width)  # (B, H)
    at = torch.arange(rows, device=scores.device).unsqueeze(1) * width + cols  # (B, H) flat positions
    # items outside the chunk mark a spare slot past the copy: a scatter, not boolean indexing, so nothing
    # waits on the device for the number of marked items
    at = torch.where(inside, at, rows * width)
    out = torch.empty(rows * width + 1, dtype=scores.dtype, device=scores.device)  # (B * C + 1,)
    out[: rows * width].view(rows, width).copy_(scores)
    out.index_fill_(0, at.reshape(-1), float("-inf"))
    return out[: rows * width].view(rows, width)


def _keys(values: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Clean float scores (B, C) and their catalog columns -> (B, C) int64 keys ordered as (score desc, column
    asc); distinct keys make top-k independent of how ties fall into chunks."""
    bits = values.contiguous().view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()  # (B, C) monotone in the score
    return (ordered << 32) + (_LOW - cols)  # (B, C)


def _clean(scores: torch.Tensor) -> torch.Tensor:
    """(B, C) float32 scores with NaN at -inf (NaN sorts as -inf, as in numpy) and -0.0 at 0.0 (they tie)."""
    inf = float("inf")
    clean = torch.nan_to_num(scores.float(), nan=-inf, posinf=inf, neginf=-inf)  # (B, C)
    return clean.masked_fill_(clean == 0, 0.0)


def _top_keys(scores: torch.Tensor, start: int) -> torch.Tensor:
    """(B, C) float scores -> (B, C) keys of every column (the exact, slower walk)."""
    cols = torch.arange(start, start + scores.shape[1], device=scores.device)  # (C,)
    return _keys(_clean(scores), cols)


def _candidate_keys(scores: torch.Tensor, start: int, want: int) -> torch.Tensor:
    """Keys of a chunk's ``want`` best columns by score (float top-k, ties among them arbitrary): (B, <= want).

    Only the candidates are cleaned (-0.0 to 0.0); the whole chunk only when it holds a NaN (topk ranks NaN
    first, numpy last)."""
    scores = scores.float()
    if torch.isnan(scores).any():
        scores = _clean(scores)
    values, cols = scores.topk(min(want, scores.shape[1]), dim=1)  # (B, W)
    return _keys(values.masked_fill(values == 0, 0.0), cols + start)


def key_scores(keys: torch.Tensor) -> torch.Tensor:
    """The clean float32 scores (NaN as -inf) held in top-k keys: (B, K) int64 -> (B, K) float32."""
    ordered = (keys >> 32).to(torch.int32)
    return torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF).view(torch.float32)


def _merge_top(best: torch.Tensor | None, keys: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest keys of a running (B, <= k) best and a chunk's (B, C) keys, largest first."""
    top = keys.topk(min(k, keys.shape[1]), dim=1).values  # (B, <= k)
    if best is not None:
        top = torch.cat([best, top], dim=1)  # (B, <= 2k)
        top = top.topk(min(k, top.shape[1]), dim=1).values
    return top


def _target_scores(
    chunk: ScoreChunk, bounds: list[tuple[int, int]], targets: torch.Tensor, exclude: torch.Tensor | None
) -> torch.Tensor:
    """(B,) score of each target column as the chunk walk sees it; -inf where the target is history."""
    size = bounds[0][1] - bounds[0][0]
    # only the chunks that hold a target (one chunk: no device-to-host read to find out)
    holding = [0] if len(bounds) == 1 else (targets // size).unique().tolist()
    found: torch.Tensor | None = None
    for index in holding:
        start, stop = bounds[index]
        values = chunk(start, stop)  # (B, C)
        inside = (targets >= start) & (targets < stop)  # (B,)
        picked = values.gather(1, (targets - start).clamp(0, stop - start - 1).unsqueeze(1)).squeeze(
            1
        )  # (B,)
        found = torch.where(inside, picked, picked if found is None else found)  # every target in one chunk
    if found is None:  # an empty batch
        return torch.empty(0, device=targets.device)
    if exclude is not None:
        seen = (exclude == (targets + 1).unsqueeze(1)).any(1)  # (B,) target among the history items
        found = found.masked_fill(seen, float("-inf"))
    return found


def _chunks(
    scores: torch.Tensor | ScoreChunk, n_items: int | None, chunk_items: int | None
) -> tuple[ScoreChunk, list[tuple[int, int]]]:
    """A chunk source over the catalog and its (start, stop) bounds; a single chunk is scored once."""
    if isinstance(scores, torch.Tensor):
        n_items, full = scores.shape[1], scores

        def source(start: int, stop: int) -> torch.Tensor:
            return full[:, start:stop]  # a view: masking copies only the chunk

    elif n_items is None:
        raise ValueError("rank_targets needs n_items when scores come in chunks")
    else:
        source = scores
    size = max(1, min(chunk_items or n_items, n_items))
    bounds = [(start, min(start + size, n_items)) for start in range(0, n_items, size)]
    if len(bounds) > 1:
        return source, bounds
    whole = source(0, n_items)  # (B, N)
    return (lambda start, stop: whole), bounds


class Ranked(NamedTuple):
    """What :func:`rank_top` brings back, all on the scores' device."""

    ranks: torch.Tensor  # (B,) float64, 1 = best, inf = never a hit
    top: torch.Tensor | None  # (B, K) best columns, best first, ties towards the lower column (None: k = 0)
    top_scores: torch.Tensor | None  # (B, K) their scores, NaN as -inf
    target_scores: torch.Tensor  # (B,) each target's score, -inf where the history holds it


def rank_targets(
    scores: torch.Tensor | ScoreChunk,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    k: int = 0,
    chunk_items: int | None = None,
    n_items: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rank each query's target over the catalog, history excluded; the twin of ``target_ranks`` + ``top_k``.

    ``scores`` is a (B, N) tensor or a :data:`ScoreChunk` (then ``n_items`` = N is required); ``targets``
    (B,) are column indices; ``exclude`` (B, H) item indices (0 = pad) or None for no masking, moved to the
    scores' device (with a ScoreChunk they must be on the chunks' device already). Returns (B,) float64 ranks
    (1 = best, inf = never a hit) and, when k > 0, the (B, min(k, N)) best columns, best first, ties broken
    towards the lower column; both on that device.
    """
    ranked = rank_top(scores, targets, exclude, k, chunk_items, n_items)
    return ranked.ranks, ranked.top


def rank_top(
    scores: torch.Tensor | ScoreChunk,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    k: int = 0,
    chunk_items: int | None = None,
    n_items: int | None = None,
) -> Ranked:
    """:func:`rank_targets` with the top-k scores and the target scores too (what the served re-rank needs).

    Top-k takes each chunk's k + 1 best by a float top-k and merges them by exact keys; a row whose k-th and
    (k + 1)-th scores tie (the tie could hide a lower column) is walked again with a key for every column, so
    every row gets the deterministic (score desc, column asc) list at the cost of float top-k.
    """
    source, bounds = _chunks(scores, n_items, chunk_items)
    device = scores.device if isinstance(scores, torch.Tensor) else targets.device
    targets = targets.to(device)
    exclude = exclude.to(device) if exclude is not None else None
    target = _target_scores(source, bounds, targets, exclude)  # (B,)
    at_least = torch.zeros(len(targets), dtype=torch.long, device=device)  # (B,)
    best = None
    for start, stop in bounds:
        part = source(start, stop)  # (B, C)
        if exclude is not None:
            part = mask_history(part, exclude, start)
        at_least += (part >= target.unsqueeze(1)).sum(1, dtype=torch.int32)  # NaN never outranks
        if k > 0:
            best = _merge_top(best, _candidate_keys(part, start, k + 1), k + 1)
    miss = torch.isnan(target) | torch.isneginf(target)  # (B,)
    ranks = torch.where(miss, torch.full_like(target, float("inf"), dtype=torch.float64), at_least.double())
    if best is None:
        return Ranked(ranks, None, None, target)
    best = _settle_ties(best, k, source, bounds, exclude)  # (B, min(k, N))
    return Ranked(ranks, _LOW - (best & _LOW), key_scores(best), target)


def _settle_ties(
    best: torch.Tensor,
    k: int,
    source: ScoreChunk,
    bounds: list[tuple[int, int]],
    exclude: torch.Tensor | None,
) -> torch.Tensor:
    """(B, <= k + 1) merged candidate keys -> (B, <= k) exact top-k keys: rows where a tie crosses the k-th
    place are walked again with every column's key."""
    if best.shape[1] <= k:  # the catalog is no longer than k: every column is in
        return best
    values = key_scores(best)  # (B, k + 1)
    tied = values[:, k - 1] == values[:, k]  # (B,)
    best = best[:, :k]
    rows = tied.nonzero().squeeze(1)  # a read back to the host: evaluation only, never a training step
    if len(rows) == 0:
        return best
    exact = None
    for start, stop in bounds:
        part = source(start, stop)[rows]  # (R, C)
        if exclude is not None:
            part = mask_history(part, exclude[rows], start)
        exact = _merge_top(exact, _top_keys(part, start), k)
    best = best.clone()
    best[rows] = exact
    return best
