"""Search with filters over a FAISS index, and the exact twins every index is checked against (no torch).

:func:`filtered_search` answers one query among the rows a :class:`~serving.core.selector.Selector` lets
through, exactly ``min(k, available)`` results; :func:`exact_search` is brute-force inner product for many
queries (the reference of every recall figure); :func:`masked_top_k` is the one-query exact path of flat
indexes.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from serving.core.index import IVF_KINDS, IndexSpec, search_parameters
from serving.core.selector import Selector


def exact_search(
    xb: np.ndarray,
    xq: np.ndarray,
    k: int,
    keep: np.ndarray | None = None,
    exclude: Sequence[np.ndarray] | None = None,
):
    """Brute-force inner product (the exact twin of every index): (D, I) like ``index.search``.

    ``keep`` (N,): rows every query may return; ``exclude``: per query, rows it must not return."""
    scores = xq @ xb.T  # (Q, N)
    if keep is not None:
        scores = np.where(keep[None, :], scores, -np.inf)
    for row, rows in enumerate(exclude or ()):
        scores[row, rows] = -np.inf
    k = min(k, xb.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(top, order, axis=1)
    dist = np.take_along_axis(scores, ids, axis=1)
    ids = np.where(np.isfinite(dist), ids, -1)
    return dist.astype(np.float32), ids.astype(np.int64)


def masked_top_k(xb: np.ndarray, xq: np.ndarray, k: int, selector: Selector) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, rows) of one query ``xq`` (D,) over ``xb`` (N, D) among the rows passing
    ``selector``: one BLAS matrix-vector product and one partition, with no bitmap."""
    scores = xb @ xq  # (N,)
    if selector.allow is not None:
        kept = np.full_like(scores, -np.inf)
        kept[selector.allow] = scores[selector.allow]
        scores = kept
    if len(selector.exclude):
        scores[selector.exclude] = -np.inf
    n = len(scores)
    k = min(k, n)
    top = np.argpartition(scores, n - k)[n - k :]  # (k,) unordered
    top = top[np.argsort(-scores[top], kind="stable")]
    found = scores[top]
    if found[-1] > -np.inf:  # callers ask for at most what passes (Selector.at_most), so this is the rule
        return found, top
    passed = found > -np.inf
    return found[passed], top[passed]


OVERFETCH_ROUNDS = 3
POSTFILTER_MAX_EXCLUDED = 128  # inverted lists: up to this many excluded rows are dropped after the search
_PLAIN_PARAMS: dict[tuple, faiss.SearchParameters] = {}  # search parameters without a selector, per setting


def postfilters(spec: IndexSpec, selector: Selector) -> bool:
    """Whether an exclusion-only filter is applied after an unfiltered search (see :func:`filtered_search`)."""
    if spec.kind not in IVF_KINDS or (spec.kind == "ivf_pq" and spec.refine):
        return False
    return selector.allow is None and len(selector.exclude) <= POSTFILTER_MAX_EXCLUDED


def filtered_search(
    index: faiss.Index,
    spec: IndexSpec,
    xb: np.ndarray,
    xq: np.ndarray,
    k: int,
    selector: Selector,
    blas_flat: bool = True,
    postfilter: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one query among the ids passing ``selector``: exactly min(k, available) results.

    A flat (exact) index is answered by :func:`masked_top_k` over ``xb``, the same exact inner-product search
    (faster than FAISS's one-query flat scan, and it needs no bitmap: docs/benchmarks.md);
    ``blas_flat=False`` runs FAISS's flat search instead (its twin, for checking).

    Inverted lists with a short exclusion (a history) are searched unfiltered for the top k + E and the E
    excluded rows dropped afterwards: the lists scanned are the same, so the answer is the filtered search's,
    without a bitmap test per scanned code, which makes it faster.
    ``postfilter=False`` runs the filter inside the search instead (its twin, for checking). Otherwise the
    filter runs inside the FAISS search; graph and IVF searches under a tight filter can come back short, so
    the search is repeated with a 4x larger k, and as a last resort the exact twin answers.
    """
    n = index.ntotal
    want = selector.at_most(k)
    if want <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if blas_flat and spec.kind == "flat":
        return masked_top_k(xb, np.asarray(xq, dtype=np.float32).reshape(-1), want, selector)
    xq = np.asarray(xq, dtype=np.float32).reshape(1, -1)
    if postfilter and postfilters(spec, selector):
        D, I = index.search(xq, min(n, want + len(selector.exclude)), params=_plain_params(spec))
        scores, rows = _drop_rows(D[0], I[0], selector.exclude)
        if len(rows) >= want:
            return scores[:want], rows[:want]
    params = selector.params(index, spec)
    fetch = want
    for _ in range(OVERFETCH_ROUNDS):
        D, I = index.search(xq, fetch, params=params)
        if I[0, want - 1] >= 0:  # results come sorted, misses (-1) last
            return D[0, :want], I[0, :want]
        found = I[0] >= 0
        if found.sum() >= want:
            return D[0][found][:want], I[0][found][:want]
        fetch = min(n, fetch * 4)
    D, I = exact_search(xb, xq, want, selector.mask())
    return D[0], I[0]


def _drop_rows(scores: np.ndarray, rows: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) without the misses (-1) and the excluded rows: a set test per result and one gather by
    the kept positions, which after an encode (cold caches) costs less than a vectorised membership test or a
    boolean mask."""
    excluded = set(exclude.tolist())
    keep = [j for j, row in enumerate(rows.tolist()) if row >= 0 and row not in excluded]
    if len(keep) == len(rows):
        return scores, rows
    return scores[keep], rows[keep]


def _plain_params(spec: IndexSpec):
    """Search parameters of ``spec`` without a selector (made once per setting; they hold no index)."""
    key = spec.search_key()
    params = _PLAIN_PARAMS.get(key)
    if params is None:
        params = _PLAIN_PARAMS[key] = search_parameters(None, spec)
    return params
