"""Export + torch-free serving: ONNX parity, ANN vs exact, filters, fallback, bundle verification."""

from __future__ import annotations

import json
import subprocess
import sys

import faiss
import numpy as np
import pytest
import torch

from serving.core.bundle import BundleError
from serving.core.index import IndexSpec, Selector, build_index, search_parameters
from serving.core.search import exact_search
from serving.recommender import Recommender
from twotower.artifacts import load_model
from twotower.config import PROJECT_ROOT
from twotower.export import onnx_parity, random_histories


@pytest.fixture(scope="module")
def rec(run_and_bundle):
    return Recommender.load(run_and_bundle[1])


def test_manifest_and_onnx_parity(run_and_bundle):
    run, bundle, manifest = run_and_bundle
    assert manifest["onnx_parity_max_abs"] <= 1e-5
    assert set(manifest["files"]) == {"user_tower.onnx", "item_embeddings.npy", "item_ids.json", "items.parquet",
                                      "histories.parquet", "index.faiss", "category_embeddings.npy",
                                      "user_tower_unpadded.onnx"}  # fmt: skip
    assert manifest["index"]["factory"] == "HNSW32,Flat" and manifest["index"]["recall@10_vs_exact"] >= 0.95
    assert not list(bundle.glob("*.pkl")) and not list(bundle.glob("*.pt"))
    net = load_model(run / "model.pt")
    assert onnx_parity(net, bundle / "user_tower.onnx", []) <= 1e-5
    assert onnx_parity(net, bundle / "user_tower_unpadded.onnx", [], padded=False) <= 1e-5


def test_unpadded_graph_matches_batch_graph(rec):
    """Single requests run the unpadded graph; the padded batch graph is its exact twin."""
    assert rec.single_session is not rec.session
    worst = max(
        np.abs(rec.encode_rows(h) - rec.encode_rows(h, padded_graph=True)).max()
        for h in rec.histories.values()
    )
    assert worst <= 1e-6


def test_bundle_without_unpadded_graph_still_serves(run_and_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "old"
    shutil.copytree(run_and_bundle[1], bundle)
    (bundle / "user_tower_unpadded.onnx").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["user_tower_unpadded.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    old = Recommender.load(bundle)
    assert old.single_session is old.session
    user = next(iter(old.histories))
    assert old.recommend(user_id=user, k=5) == Recommender.load(run_and_bundle[1]).recommend(
        user_id=user, k=5
    )


def test_encode_history_matches_torch(run_and_bundle, rec):
    net = load_model(run_and_bundle[0] / "model.pt")
    items = rec.item_ids[:5]
    vector = rec.encode_history(
        items, events=["click"] * 5, dwell=[3.0, 10, -1, 50, 7], ts=[0, 10, 20, 4000, 4001]
    )
    rows = torch.tensor([[rec.row_of[i] + 1 for i in items]])
    events = torch.tensor([[rec.event_of["click"]] * 5])
    with torch.no_grad():
        ref = net.encode_user(rows, events, torch.tensor([[3.0, 10, -1, 50, 7]]),
                              torch.tensor([[-1.0, 10, 10, 3980, 1]]))[0].numpy()  # fmt: skip
    np.testing.assert_allclose(vector, ref, atol=1e-5)


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


def test_filters_always_give_k(rec):
    user = next(iter(rec.histories))
    seen = {rec.item_ids[r] for r in rec.histories[user].rows}
    top = rec.recommend(user_id=user, k=10)
    assert len(top) == 10 and not seen & {x["item_id"] for x in top}
    banned = [x["item_id"] for x in top[:5]]
    again = rec.recommend(user_id=user, k=10, exclude_items=banned)
    assert len(again) == 10 and not set(banned) & {x["item_id"] for x in again}
    allow = [i for i in rec.item_ids if i not in seen][:12]
    allowed = rec.recommend(user_id=user, k=10, allow_items=allow)
    assert len(allowed) == 10 and {x["item_id"] for x in allowed} <= set(allow)
    # the allowed items are ranked exactly as brute force would
    query = rec.encode_rows(rec.histories[user])
    rows = [rec.row_of[i] for i in allow]
    expected = [allow[j] for j in np.argsort(-(rec.vectors[rows] @ query), kind="stable")[:10]]
    assert [x["item_id"] for x in allowed] == expected
    # fewer allowed than k: all of them, never an excluded one
    few = rec.recommend(user_id=user, k=10, allow_items=allow[:3])
    assert {x["item_id"] for x in few} == set(allow[:3])


def test_scores_are_sorted_and_match_exact(rec):
    user = next(iter(rec.histories))
    top = rec.recommend(user_id=user, k=5, exclude_seen=False)
    scores = [x["score"] for x in top]
    assert scores == sorted(scores, reverse=True)
    query = rec.encode_rows(rec.histories[user])
    _, exact = exact_search(rec.vectors, query[None, :], 5)
    assert [x["item_id"] for x in top] == [rec.item_ids[i] for i in exact[0]]


def test_fallback_and_unknown_items(rec):
    anon = rec.recommend_detailed(user_id="no-such-user", k=5)
    assert anon.source == "popularity" and len(anon.items) == 5
    empty = rec.recommend_detailed(history=[], k=5)
    assert empty.items == anon.items
    mixed = rec.recommend_detailed(history=[rec.item_ids[0], "ghost"], k=5)
    assert mixed.source == "model" and mixed.unknown_items == ["ghost"] and mixed.history_length == 1
    assert len(rec.similar_items(rec.item_ids[0], 4)) == 4
    with pytest.raises(KeyError):
        rec.similar_items("ghost")


def test_ids_alone_resolve_as_the_full_path_does(rec):
    """The short path for a history of known ids alone gives the full path's arrays (reached here by passing
    dwell that is all unknown, which changes nothing); misses, numbers and bad ids still take the full path."""
    ids = [rec.item_ids[r] for r in (3, 0, 7, 3, 12)]
    short, full = rec.resolve(ids), rec.resolve(ids, dwell=[None] * len(ids))
    for name in ("rows", "events", "dwell", "gaps"):
        a, b = getattr(short.history, name), getattr(full.history, name)
        assert a.dtype == b.dtype and a.tolist() == b.tolist(), name
    assert (short.unknown, short.live_seen, short.n_events) == ([], set(), 5)

    class Number:  # an id sent as another type (a JSON number for digit ids): found by its text
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    numbers = rec.resolve([ids[0], Number(ids[1]), *ids[2:], "ghost"])
    assert numbers.history.rows.tolist() == [3, 0, 7, 3, 12] and numbers.unknown == ["ghost"]
    assert numbers.n_events == 6
    one = rec.resolve(ids[:1])
    assert one.history.rows.tolist() == [3] and one.history.rows.dtype == np.int64
    assert len(rec.resolve([]).history) == 0
    with pytest.raises(TypeError):
        rec.resolve([ids[0], ["not", "an", "id"]])


def test_search_knobs_change_without_rebuild(run_and_bundle, caplog):
    from serving.settings import Settings

    rec = Recommender.load(run_and_bundle[1], search={"ef_search": 5})
    assert rec.spec.kind == "hnsw" and rec.spec.ef_search == 5
    before = rec.spec
    assert rec.set_search(ef_search=300).ef_search == 300 and before.ef_search == 5  # replaced, not mutated
    assert search_parameters(rec.index, rec.spec).efSearch == 300
    assert len(rec.recommend(history=[rec.item_ids[1], rec.item_ids[2]], k=5)) == 5
    with caplog.at_level("WARNING", logger="serving.core.index"):
        rec.set_search(nprobe=4)
    assert "no effect on a hnsw index" in caplog.text
    for bad in ({"nprob": 4}, {"ef_search": 0}, {"ef_search": True}, {"ef_search": "64"}, {"ef_search": 2.5}):
        with pytest.raises(ValueError, match="search parameter"):
            rec.set_search(**bad)
    assert rec.spec.ef_search == 300  # a refused change leaves the spec as it was
    assert Settings(nprobe=7).load_kwargs()["search"] == {"nprobe": 7}
    assert Settings().load_kwargs()["search"] == {}


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


def test_corrupt_or_mismatched_bundle_fails_at_load(run_and_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(run_and_bundle[1], bundle)
    with open(bundle / "item_ids.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(BundleError, match="item_ids.json: sha256"):
        Recommender.load(bundle)
    shutil.copyfile(run_and_bundle[1] / "item_ids.json", bundle / "item_ids.json")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["dim"] = 7
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="item_embeddings.npy: expected float32"):
        Recommender.load(bundle)
    (bundle / "index.faiss").unlink()
    with pytest.raises(BundleError, match="index.faiss: missing"):
        Recommender.load(bundle)


def test_serving_imports_no_torch(run_and_bundle):
    code = (
        "import sys; from serving.recommender import Recommender; r = Recommender.load(sys.argv[1]); r.recommend(k=3); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'lightning', 'hydra')]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(run_and_bundle[1])], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_random_histories_shapes(run_and_bundle):
    net = load_model(run_and_bundle[0] / "model.pt")
    items, events, dwell, gaps = random_histories(net, 2, 3)
    assert items.shape == events.shape == dwell.shape == gaps.shape == (2, 3)


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
