"""FAISS indexes: ANN against exact search, fp16 centroids against FAISS's own assignment, selectors and their pooled bitmaps."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from serving.core.index import IndexSpec, build_index, search_parameters
from serving.core.search import exact_search
from serving.core.selector import Selector


@pytest.mark.parametrize(
    ("kind", "spherical", "coarse_type"),
    [
        ("flat", False, "fp16"),  # no centroids: recorded as flat
        ("hnsw", False, "fp16"),
        ("ivf_flat", False, "fp16"),
        ("ivf_flat", False, "flat"),
        ("ivf_sq", False, "fp16"),
        ("ivf_sq", False, "flat"),
        ("ivf_sq", True, "fp16"),
        ("ivf_pq", False, "fp16"),
    ],
)
def test_ann_agrees_with_exact(kind, spherical, coarse_type):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32)).astype(np.float32)
    xb = centers[rng.integers(0, 20, 5000)] + 0.3 * rng.normal(size=(5000, 32)).astype(np.float32)
    xq = xb[rng.choice(5000, 100)] + 0.1 * rng.normal(size=(100, 32)).astype(np.float32)
    index, spec = build_index(
        xb, IndexSpec(kind=kind, nprobe=16, spherical=spherical, coarse_type=coarse_type)
    )
    assert index.ntotal == 5000
    if kind.startswith("ivf"):  # the k-means the lists came from, and the centroids' type as built
        ivf = faiss.extract_index_ivf(index)
        assert ivf.cp.spherical is spherical
        fp16 = kind in ("ivf_flat", "ivf_sq") and coarse_type == "fp16"  # ivf_pq keeps float32 centroids
        assert spec.coarse_type == ("fp16" if fp16 else "flat")
        assert isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat) is not fp16
    _, exact = exact_search(xb, xq, 10)
    _, approx = index.search(xq, 10, params=search_parameters(index, spec))
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, (kind, recall)
    # and under a filter the results respect it
    keep = np.arange(0, 5000, 3)
    _, filtered = index.search(
        xq[:5], 10, params=search_parameters(index, spec, Selector(5000, allow=keep).selector)
    )
    assert np.isin(filtered[filtered >= 0], keep).all()


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_sq"])
def test_fp16_centroids_build_the_lists_faiss_would(kind):
    """fp16 centroids: the build assigns vectors to lists by BLAS products of the decoded centroids; FAISS's own
    add (the twin) assigns them by scanning the fp16 codes. Same lists, same answers, same recall as float32
    centroids within rounding."""
    from serving.core.index import coarse_centroids

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(30, 24)).astype(np.float32)
    xb = centers[rng.integers(0, 30, 6000)] + 0.4 * rng.normal(size=(6000, 24)).astype(np.float32)
    xq = xb[rng.choice(6000, 500)] + 0.1 * rng.normal(size=(500, 24)).astype(np.float32)
    index, spec = build_index(xb, IndexSpec(kind=kind, nlist=60, nprobe=6, coarse_type="fp16"))
    centroids = coarse_centroids(index)
    assert centroids is not None and centroids.shape == (60, 24)
    twin = faiss.clone_index(index)  # the same trained fp16 centroids, filled by FAISS's own assignment
    twin.reset()
    twin.add(xb)
    ivf, twin_ivf = faiss.extract_index_ivf(index), faiss.extract_index_ivf(twin)
    assert [ivf.invlists.list_size(i) for i in range(60)] == [
        twin_ivf.invlists.list_size(i) for i in range(60)
    ]
    params = search_parameters(index, spec)
    np.testing.assert_array_equal(
        index.search(xq, 20, params=params)[1], twin.search(xq, 20, params=params)[1]
    )
    flat, flat_spec = build_index(xb, IndexSpec(kind=kind, nlist=60, nprobe=6))  # the default: float32
    assert coarse_centroids(flat) is None and flat_spec.coarse_type == "flat"
    _, exact = exact_search(xb, xq, 20)
    recall = [
        np.mean(
            [
                len(set(a) & set(e)) / 20
                for a, e in zip(ix.search(xq, 20, params=params)[1], exact, strict=True)
            ]
        )
        for ix in (index, flat)
    ]
    assert abs(recall[0] - recall[1]) <= 0.01 and recall[0] >= 0.8, recall
    with pytest.raises(ValueError, match="coarse_type"):
        build_index(xb, IndexSpec(kind=kind, coarse_type="bf16"))


def test_selector_counts():
    sel = Selector(5, exclude=[1, 2], allow=[2, 3, 4, 9])  # 9 is out of range
    assert sel.available() == 2 and sel.at_most(1) == 1 and sel.at_most(10) == 2
    assert sel.mask().tolist() == [False, False, False, True, True]
    wide = Selector(20, exclude=[0, 0, 7, 8, 19, -1])  # duplicates and neighbouring bits in one byte
    assert wide.available() == 16 and wide.at_most(3) == 3
    assert np.flatnonzero(~wide.mask()).tolist() == [0, 7, 8, 19]
    everyone = Selector(20)
    assert everyone.available() == 20 and everyone.mask().all()


def _bitmap_rows(selector: Selector) -> list[int]:
    """Rows the selector's FAISS bitmap blocks (making the bitmap if it was not made yet)."""
    selector.selector  # noqa: B018 - the bitmap is made on first use
    return np.flatnonzero(~selector.mask()).tolist()


@pytest.mark.parametrize("n", [20, 70_000])  # the bool-mask rewrite and the bit-by-bit restore
def test_pooled_exclusion_bitmap_is_restored_and_per_thread(n):
    import threading

    with Selector(n, exclude=[3, 4, 11]) as first:
        assert _bitmap_rows(first) == [3, 4, 11]
        with Selector(n, exclude=[5]) as nested:  # the pool's bitmap is lent out: this one gets its own
            assert _bitmap_rows(nested) == [5]
        assert _bitmap_rows(first) == [3, 4, 11]
    again = Selector(n, exclude=[0])
    assert _bitmap_rows(again) == [0]  # earlier exclusions were set back
    again.release()
    assert _bitmap_rows(Selector(n)) == []
    unused = Selector(n, exclude=[1, 2])  # no bitmap made: nothing borrowed, nothing to give back
    assert np.flatnonzero(~unused.mask()).tolist() == [1, 2]
    unused.release()
    seen = []

    def worker(row):
        for _ in range(200):
            with Selector(n, exclude=[row]) as sel:
                seen.append(_bitmap_rows(sel) == [row])

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(seen) and len(seen) == 800
