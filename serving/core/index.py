"""FAISS index construction, search parameters and id selectors (no torch). FAISS names (xb, xq, D, I, k) live
here and in :mod:`serving.core.search` only.

Index presets (``kind``): ``flat`` (exact inner product), ``hnsw`` (HNSW graph), ``ivf_flat``, ``ivf_sq`` and
``ivf_pq`` (inverted lists holding float32 vectors, scalar-quantised ones (``sq_type``: fp16 keeps float32's
recall at half the bytes scanned, 8bit a quarter) or product-quantised codes). ``auto`` picks exact search below
``EXACT_MAX_ITEMS`` items and fp16 inverted lists above (at a million items they beat HNSW on build time,
memory and search time at the same recall: docs/benchmarks.md). Filters run inside the search through an
``IDSelector``, except a short exclusion from inverted lists, which is dropped after the search
(:func:`serving.core.search.filtered_search`).

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

import contextlib
import logging
import math
import threading
from collections.abc import Iterable, Mapping
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


class _BitmapPool(threading.local):
    """Per-thread all-ones bitmaps (with their FAISS selector), lent to exclusion-only requests."""

    def __init__(self) -> None:
        # n_items -> (bitmap, its selector, search parameters bound to it, all-True bool mask or None)
        self.free: dict[int, tuple[np.ndarray, faiss.IDSelectorBitmap, dict, np.ndarray | None]] = {}


_POOL = _BitmapPool()
PACK_MAX_ITEMS = 1 << 16  # up to here a pooled bitmap is rewritten from a bool mask (3 numpy calls)


class Selector:
    """An id filter (allow-list and/or exclusion) over rows ``0..n_items-1``, as a FAISS bitmap selector when a
    FAISS search needs one.

    One bit per row (little-endian within a byte, as ``faiss.IDSelectorBitmap`` reads it), so the test inside
    the search is a shift and a mask. The bitmap is made on first use (an exact search over a flat index reads
    the rows directly and never needs it). An exclusion-only filter borrows this thread's all-ones bitmap and
    clears one bit per excluded row: O(filters) work whatever the catalog size; :meth:`release` (or leaving a
    ``with`` block, or dropping the object) sets the bits back and returns the bitmap. An allow-list builds its
    own bitmap. The object must outlive the search that uses it.
    """

    def __init__(
        self,
        n_items: int,
        exclude: Iterable[int] | np.ndarray = (),
        allow: Iterable[int] | np.ndarray | None = None,
        trusted: bool = False,
    ) -> None:
        """``trusted``: the caller guarantees every id is a valid row (skips the range check)."""
        self.n_items = n_items
        self.exclude = _rows(exclude) if trusted else _in_range(exclude, n_items)  # rows that may not pass
        self.allow = None if allow is None else (_rows(allow) if trusted else _in_range(allow, n_items))
        self._bits: np.ndarray | None = None  # made by _bitmap()
        self._pooled = False  # the bitmap is this thread's pooled one (to be given back)

    def _bitmap(self) -> np.ndarray:
        if self._bits is not None:
            return self._bits
        exclude, allow = self.exclude, self.allow
        if allow is None:
            entry = _POOL.free.pop(self.n_items, None) or _new_entry(self.n_items)
            self._bits, self._selector, self._params, self._keep = entry
            self._pooled = True
            if self._keep is not None:  # small catalog: the whole bitmap rewritten from the bool mask
                self._keep[exclude] = False
                self._bits[:] = np.packbits(self._keep, bitorder="little")
                self._keep[exclude] = True
                return self._bits
        else:
            self._bits = np.zeros((self.n_items + 7) // 8, dtype=np.uint8)
            np.bitwise_or.at(self._bits, allow >> 3, (1 << (allow & 7)).astype(np.uint8))
            self._selector = faiss.IDSelectorBitmap(len(self._bits), faiss.swig_ptr(self._bits))
            self._params, self._keep = {}, None
        if len(exclude):
            np.bitwise_and.at(self._bits, exclude >> 3, ~(1 << (exclude & 7)).astype(np.uint8))
        return self._bits

    @property
    def selector(self) -> faiss.IDSelectorBitmap:
        """The FAISS selector over this filter's bitmap."""
        self._bitmap()
        return self._selector

    def release(self) -> None:
        """Give a borrowed bitmap back (bits restored); the selector must not be used afterwards."""
        if self._pooled:
            self._pooled = False
            if self._keep is None and len(self.exclude):  # a pooled bitmap is all ones at rest
                self._bits[self.exclude >> 3] = 0xFF
            _POOL.free[self.n_items] = (self._bits, self._selector, self._params, self._keep)

    def __enter__(self) -> Selector:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the pool may be gone
            self.release()

    def params(self, index: faiss.Index, spec: IndexSpec):
        """Search parameters for ``spec`` bound to this selector (built once per thread's pooled bitmap)."""
        self._bitmap()
        key = (id(index), *spec.search_key())
        params = self._params.get(key)
        if params is None:
            params = self._params[key] = search_parameters(index, spec, self._selector)
        return params

    def mask(self) -> np.ndarray:
        """(N,) bool of the rows that pass (for the exact path)."""
        if self._bits is not None:
            return np.unpackbits(self._bits, count=self.n_items, bitorder="little").astype(bool)
        keep = np.ones(self.n_items, dtype=bool)
        if self.allow is not None:
            keep[:] = False
            keep[self.allow] = True
        keep[self.exclude] = False
        return keep

    def available(self) -> int:
        """How many rows pass (an upper bound on what a search can return)."""
        if self.allow is None:
            return self.n_items - len(np.unique(self.exclude))
        return int(np.count_nonzero(self.mask()))

    def at_most(self, k: int) -> int:
        """``min(k, available())``, without counting when the exclusions cannot bring it under k."""
        if self.allow is None and self.n_items - len(self.exclude) >= k:
            return k
        return min(k, self.available())


def _new_entry(n_items: int) -> tuple[np.ndarray, faiss.IDSelectorBitmap, dict, np.ndarray | None]:
    """A pool entry: all-ones bitmap (bits past n_items set too: no such id exists), its selector, a mask."""
    bits = np.full((n_items + 7) // 8, 0xFF, dtype=np.uint8)
    keep = np.ones(n_items, dtype=bool) if n_items <= PACK_MAX_ITEMS else None
    return bits, faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), {}, keep


def _rows(values: Iterable[int] | np.ndarray) -> np.ndarray:
    return (
        values.astype(np.int64, copy=False)
        if isinstance(values, np.ndarray)
        else np.fromiter(values, np.int64)
    )


def _in_range(values: Iterable[int] | np.ndarray, n_items: int) -> np.ndarray:
    """int64 array of the values that are valid rows (unknown rows cannot pass or be excluded)."""
    rows = _rows(values)
    if not len(rows) or (rows.min() >= 0 and rows.max() < n_items):
        return rows
    return rows[(rows >= 0) & (rows < n_items)]
