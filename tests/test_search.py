"""Filtered search: the BLAS flat path and the post-filtered IVF path against their exact twins."""

from __future__ import annotations

import numpy as np
import pytest

from serving.core.index import IndexSpec, build_index
from serving.core.selector import Selector


@pytest.mark.parametrize("n_items", [50, 3000])
def test_blas_flat_search_matches_faiss_flat(n_items):
    """A flat index is searched with one BLAS product; FAISS's own flat search (its twin) gives the same."""
    from serving.core.search import filtered_search

    rng = np.random.default_rng(n_items)
    xb = rng.normal(size=(n_items, 16)).astype(np.float32)
    index, spec = build_index(xb, IndexSpec(kind="flat"))
    for trial in range(20):
        query = rng.normal(size=16).astype(np.float32)
        exclude = rng.choice(n_items, size=rng.integers(0, n_items // 2), replace=False)
        allow = None if trial % 2 else rng.choice(n_items, size=rng.integers(1, 40), replace=False)
        k = int(rng.integers(1, 60))
        with Selector(n_items, exclude, allow) as sel:
            fast = filtered_search(index, spec, xb, query, k, sel)
        with Selector(n_items, exclude, allow) as sel:
            twin = filtered_search(index, spec, xb, query, k, sel, blas_flat=False)
            assert len(fast[1]) == sel.at_most(k)
        np.testing.assert_allclose(fast[0], twin[0], rtol=1e-5, atol=1e-5)
        assert fast[1].tolist() == twin[1].tolist()
        assert not set(fast[1].tolist()) & set(exclude.tolist())
        assert allow is None or set(fast[1].tolist()) <= set(allow.tolist())


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_sq"])
def test_postfiltered_ivf_search_matches_filter_in_search(kind):
    """Inverted lists with a short exclusion drop it after an unfiltered top k + E; the twin filters inside the
    search (a bitmap test per code). Same lists scanned, so the same answer; long exclusions, allow-lists and
    lists too short for k + E take the filtered search."""
    from serving.core import search
    from serving.core.search import filtered_search, postfilters

    rng = np.random.default_rng(7)
    centers = rng.normal(size=(20, 16)).astype(np.float32)
    xb = centers[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 16)).astype(np.float32)
    index, spec = build_index(xb, IndexSpec(kind=kind, nlist=40, nprobe=4))
    cases = 0
    for trial in range(40):
        query = xb[rng.integers(4000)] + 0.1 * rng.normal(size=16).astype(np.float32)
        near = index.search(query[None], 200)[1][0]  # exclusions among the very items the search finds
        size = [0, 3, 30, search.POSTFILTER_MAX_EXCLUDED, search.POSTFILTER_MAX_EXCLUDED + 1][trial % 5]
        exclude = rng.choice(near, size=min(size, len(near)), replace=False) if size <= 200 else near
        exclude = np.concatenate([exclude, exclude[:2]])  # duplicates count once
        k = int(rng.integers(1, 60)) if trial % 7 else 400  # 400: more than nprobe lists hold, then refetched
        with Selector(4000, exclude) as sel:
            cases += postfilters(spec, sel)
            fast = filtered_search(index, spec, xb, query, k, sel)
        with Selector(4000, exclude) as sel:
            twin = filtered_search(index, spec, xb, query, k, sel, postfilter=False)
        assert fast[1].tolist() == twin[1].tolist(), (trial, size, k)
        np.testing.assert_allclose(fast[0], twin[0], rtol=1e-6)
        assert len(fast[1]) == k and not set(fast[1].tolist()) & set(exclude.tolist())
    assert cases >= 20  # the post-filter path ran, not only its twin
    with Selector(4000, [1], allow=[1, 2, 3]) as sel:  # an allow-list is always tested inside the search
        assert not postfilters(spec, sel)
    assert not postfilters(IndexSpec(kind="hnsw"), Selector(4000, [1]))
    assert not postfilters(IndexSpec(kind="ivf_pq", refine=True), Selector(4000, [1]))
