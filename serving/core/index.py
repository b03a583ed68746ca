"""FAISS index construction and search parameters (no torch). FAISS names (xb, xq, D, I, k) live here and in
:mod:`serving.core.search` only.

Index presets (``kind``): ``flat`` (exact inner product), ``hnsw`` (HNSW graph), ``ivf_flat``, ``ivf_sq`` and
``ivf_pq`` (inverted lists holding float32 vectors, scalar-quantised ones (``sq_type``: fp16 keeps float32's
recall at half the bytes scanned, 8bit a quarter) or product-quantised codes). ``auto`` picks exact search below
``EXACT_MAX_ITEMS`` items and fp16 inverted lists above (at a million items they beat HNSW on build time,
memory and search time at the same recall: docs/benchmarks.md). Filters run inside the search through an
``IDSelector`` (:class:`serving.core.selector.Selector`), except a short exclusion from inverted lists, which
is dropped after the search (:func:`serving.core.search.filtered_search`).

IVF lists come from k-means on the raw vectors (``spherical=False``), not FAISS's inner-product default of
unit-norm centroids: a raw centroid's norm grows with its topic's density, so the inner product to it ranks
lists more like the best item inside them: the same recall with fewer lists probed and fewer codes scanned,
though the lists are less even in size (docs/benchmarks.md).

The centroids of ``ivf_flat`` and ``ivf_sq`` can be kept in fp16 (``coarse_type="fp16"``; default float32): a
one-query search reads them all (1 MB in float32 at 4000 lists of 64 dims), and half the bytes make a search
after an encode faster at the same recall. The price is in batches: FAISS finds their lists with one BLAS
product of float32 centroids but scans fp16 ones query by query, which costs batch scoring some of its
throughput (figures for both in docs/benchmarks.md). Hence float32 by default, fp16 for a latency-first
deployment whose batches run elsewhere (a GPU, or a bundle exported for them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)
EXACT_MAX_ITEMS = 50_000
IVF_KINDS = ("ivf_flat", "ivf_sq", "ivf_pq")
# search-time knobs (changed without a rebuild) -> the kinds that read them
SEARCH_FIELDS = {"ef_search": ("hnsw",), "nprobe": IVF_KINDS, "k_factor": ("ivf_pq",)}
COARSE_TYPES = ("flat", "fp16")
FP16_COARSE_KINDS = ("ivf_flat", "ivf_sq")  # ivf_pq keeps float32 centroids (its exact re-ranking wraps it)


@dataclass
class IndexSpec:
    kind: str = "auto"  # auto | flat | hnsw | ivf_flat | ivf_sq | ivf_pq
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 64
    nlist: int | None = None  # default: about 4 * sqrt(N)
    nprobe: int = 16
    pq_m: int | None = None  # default: D / 4 sub-quantisers (must divide D)
    refine: bool = True  # ivf_pq: re-rank k * k_factor PQ candidates with the exact vectors
    k_factor: int = 8
    train_per_list: int = 64  # IVF training sample: this many vectors per list (FAISS warns under 39)
    spherical: bool = False  # IVF k-means on unit-norm centroids (FAISS's default under inner product)
    coarse_type: str = "flat"  # ivf_flat / ivf_sq centroids: flat (float32) | fp16 (see the module docstring)
    sq_type: str = "fp16"  # ivf_sq: fp16 | 8bit (FAISS scalar quantiser names, without the "SQ")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None, strict: bool = True) -> IndexSpec:
        """The one conversion from settings: a ``conf/index`` preset, a benchmark's ``index_base``, a manifest's
        ``index`` entry. None (the mapping or a value) means the default, so a preset states only what differs
        and ``key=null`` restores a default. An unknown key raises ValueError (a misspelt setting must not be
        dropped silently); ``strict=False`` skips unknown keys, for a manifest, whose entry also records the
        build (factory, recall, build seconds)."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in (mapping or {}).items() if v is not None}
        unknown = sorted(set(given) - names)
        if unknown and strict:
            raise ValueError(f"unknown index settings {unknown}; expected some of {sorted(names)}")
        return cls(**{k: v for k, v in given.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Every field, plain types (what a manifest's ``index`` entry starts with)."""
        return asdict(self)

    def resolve(self, n_items: int, dim: int) -> IndexSpec:
        """Concrete kind and sizes for a catalog of ``n_items`` vectors of ``dim``."""
        if self.coarse_type not in COARSE_TYPES:
            raise ValueError(f"unknown coarse_type {self.coarse_type!r}; expected flat or fp16")
        spec = IndexSpec(**asdict(self))
        if spec.kind == "auto":
            spec.kind = "flat" if n_items <= EXACT_MAX_ITEMS else "ivf_sq"
        if spec.kind in IVF_KINDS and spec.nlist is None:
            spec.nlist = max(1, min(int(4 * math.sqrt(n_items)), n_items // 39 or 1))
        if spec.kind == "ivf_pq" and spec.pq_m is None:
            spec.pq_m = next(m for m in (dim // 4, dim // 2, dim) if m and dim % m == 0)
        if spec.kind not in FP16_COARSE_KINDS:  # what is built: float32 centroids, or no centroids at all
            spec.coarse_type = "flat"
        return spec

    def with_search(self, **params: int) -> IndexSpec:
        """A copy with search-time knobs changed, no rebuild: ``ef_search`` (hnsw), ``nprobe`` (inverted lists),
        ``k_factor`` (ivf_pq's exact re-ranking depth). An unknown name or a value under 1 raises ValueError; a
        knob this kind does not read is logged and left in place."""
        for name, value in params.items():
            if name not in SEARCH_FIELDS:
                raise ValueError(
                    f"unknown search parameter {name!r}; expected one of {sorted(SEARCH_FIELDS)}"
                )
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"search parameter {name} must be a positive integer, got {value!r}")
            if self.kind not in SEARCH_FIELDS[name]:
                log.warning("search parameter %s has no effect on a %s index", name, self.kind)
        return replace(self, **{name: int(value) for name, value in params.items()})

    def search_key(self) -> tuple:
        """What FAISS search parameters are made of (kind and search-time knobs): the key of their caches."""
        return (self.kind, self.ef_search, self.nprobe, self.refine, self.k_factor)

    def factory_string(self) -> str:
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.kind == "ivf_flat":
            return f"IVF{self.nlist},Flat"
        if self.kind == "ivf_sq":
            if self.sq_type not in ("fp16", "8bit", "6bit", "4bit"):
                raise ValueError(f"unknown sq_type {self.sq_type!r}; expected fp16, 8bit, 6bit or 4bit")
            return f"IVF{self.nlist},SQ{self.sq_type}"
        if self.kind == "ivf_pq":
            return f"IVF{self.nlist},PQ{self.pq_m}x8" + (",RFlat" if self.refine else "")
        raise ValueError(
            f"unknown index kind {self.kind!r}; expected auto, flat, hnsw, ivf_flat, ivf_sq or ivf_pq"
        )


def build_index(xb: np.ndarray, spec: IndexSpec, seed: int = 0) -> tuple[faiss.Index, IndexSpec]:
    """Inner-product index over ``xb`` (N, D) float32; row i gets id i."""
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    n, dim = xb.shape
    spec = spec.resolve(n, dim)
    index = faiss.index_factory(dim, spec.factory_string(), faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = spec.ef_construction
    if spec.kind in IVF_KINDS:  # see the module docstring: raw centroids find more per list scanned
        faiss.extract_index_ivf(index).cp.spherical = spec.spherical
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = xb[rng.choice(n, size=min(n, spec.train_per_list * max(spec.nlist or 1, 1)), replace=False)]
        index.train(sample)
    if spec.coarse_type == "fp16":  # before add: lists and residuals use these
        _add_with_fp16_coarse(faiss.downcast_index(index), xb)
    else:
        index.add(xb)
    return index, spec


ADD_BLOCK = 8192  # vectors assigned to lists per BLAS product when building with fp16 centroids


def _add_with_fp16_coarse(ivf: faiss.IndexIVF, xb: np.ndarray) -> None:
    """Swap the trained float32 centroids for fp16 copies, then add ``xb`` (N, D) to the lists of its nearest
    fp16 centroid, found by BLAS products (FAISS would scan the fp16 codes vector by vector, doubling the
    build). FAISS trains a non-flat quantizer only with spherical k-means under inner product, so the
    k-means runs flat and its centroids are converted."""
    coarse = faiss.IndexScalarQuantizer(ivf.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    coarse.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    ivf.quantizer = coarse
    ivf.own_fields = True  # the IVF index frees it
    coarse.this.disown()
    centroids = coarse_centroids(ivf)  # (nlist, D) the fp16 values, as float32
    for start in range(0, len(xb), ADD_BLOCK):
        block = xb[start : start + ADD_BLOCK]  # (b, D)
        lists = np.argmax(block @ centroids.T, axis=1).astype(np.int64)  # (b,)
        ivf.add_core(len(block), faiss.swig_ptr(block), None, faiss.swig_ptr(lists))


def coarse_centroids(index: faiss.Index) -> np.ndarray | None:
    """(nlist, D) float32 centroids of an inverted-list index whose coarse quantizer is not a flat one (as the
    search computes with them); None for any other index."""
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexIVF):
        return None
    quantizer = faiss.downcast_index(index.quantizer)
    if isinstance(quantizer, faiss.IndexFlat):
        return None
    return np.ascontiguousarray(quantizer.reconstruct_n(0, index.nlist), dtype=np.float32)


def search_parameters(index: faiss.Index, spec: IndexSpec, selector: faiss.IDSelector | None = None):
    """Per-query parameters (efSearch / nprobe) with an optional id selector."""
    if spec.kind == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = spec.ef_search
    elif spec.kind in IVF_KINDS:
        params = faiss.SearchParametersIVF()
        params.nprobe = spec.nprobe
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    if spec.kind == "ivf_pq" and spec.refine:  # the filter and nprobe apply to the PQ stage
        refine = faiss.IndexRefineSearchParameters()
        refine.k_factor = spec.k_factor
        refine.base_index_params = params
        refine.keep_base = params  # the SWIG object must outlive the search
        return refine
    return params
