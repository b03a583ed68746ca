"""Id filters for a FAISS search (no torch): :class:`Selector` holds an allow-list and/or exclusion over the
rows of an index and hands FAISS a bitmap ``IDSelector`` (with search parameters bound to it) when a search
needs one; exclusion-only filters borrow a per-thread all-ones bitmap, so their cost does not grow with the
catalog. :func:`serving.core.search.filtered_search` runs the search with it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable

import faiss
import numpy as np

from serving.core.index import IndexSpec, search_parameters


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
