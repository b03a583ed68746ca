"""Catalog changes without retraining: items added since the bundle was built, and items taken down.

Added items get their vector from the item tower's category part (the bundle's ``category_embeddings.npy``),
the same vector ``TwoTower.encode_new_items`` gives (tested). They are searched exactly beside the bundle's
index and merged by score; removed bundle items are filtered inside the index search. A
:class:`LiveItems` is immutable: a change builds a new one and swaps it in, so a request in flight keeps
the snapshot it started with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


def category_vector(
    table: np.ndarray, names: dict[str, int], categories: Sequence[str], normalize: bool
) -> np.ndarray:
    """(D,) item vector from category names alone: mean of their rows of ``table`` (C, D), then L2 norm."""
    unknown = [c for c in categories if c not in names or names[c] == 0]
    if unknown:
        raise ValueError(
            f"unknown categories {unknown}; known: {sorted(n for n, i in names.items() if i > 0)}"
        )
    if not categories:
        raise ValueError("a new item needs at least one category (its only features)")
    vector = table[[names[c] for c in dict.fromkeys(categories)]].mean(0)  # (D,)
    if normalize:
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return vector.astype(np.float32)


@dataclass(frozen=True)
class LiveItems:
    """Added items (exact search) and removed bundle rows, as one immutable snapshot."""

    dim: int
    ids: tuple[str, ...] = ()
    vectors: np.ndarray | None = None  # (M, D) float32
    row_of: dict[str, int] = field(default_factory=dict)
    removed_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # bundle rows

    def __post_init__(self) -> None:
        if self.vectors is None:
            object.__setattr__(self, "vectors", np.zeros((0, self.dim), np.float32))

    def with_added(self, ids: Sequence[str], vectors: np.ndarray) -> LiveItems:
        """A snapshot with ``ids`` added (or their vectors replaced when already added)."""
        keep = [i for i in self.ids if i not in set(ids)]
        kept = self.vectors[[self.row_of[i] for i in keep]] if keep else np.zeros((0, self.dim), np.float32)
        all_ids = tuple(keep) + tuple(ids)
        stacked = np.vstack([kept, np.asarray(vectors, np.float32).reshape(len(ids), self.dim)])
        return LiveItems(self.dim, all_ids, stacked, {i: r for r, i in enumerate(all_ids)}, self.removed_rows)

    def with_removed(self, ids: Iterable[str], bundle_row_of: dict[str, int]) -> LiveItems:
        """A snapshot without ``ids``: added ones are dropped, bundle ones are filtered from now on."""
        ids = set(ids)
        rows = [bundle_row_of[i] for i in ids if i in bundle_row_of]
        removed = np.union1d(self.removed_rows, np.asarray(rows, np.int64)).astype(np.int64)
        keep = [i for i in self.ids if i not in ids]
        vectors = self.vectors[[self.row_of[i] for i in keep]] if keep else None
        return LiveItems(self.dim, tuple(keep), vectors, {i: r for r, i in enumerate(keep)}, removed)

    def restored(self, bundle_rows: Iterable[int]) -> LiveItems:
        """A snapshot where these bundle rows are no longer removed (an item re-added)."""
        removed = np.setdiff1d(self.removed_rows, np.fromiter(bundle_rows, np.int64))
        return LiveItems(self.dim, self.ids, self.vectors, self.row_of, removed)

    def top(
        self, query: np.ndarray, k: int, exclude: set[str], allow: set[str] | None
    ) -> list[tuple[float, str]]:
        """Exact top-k ``(score, id)`` among the added items passing the filters."""
        if not self.ids:
            return []
        scores = self.vectors @ query  # (M,)
        ok = [j for j, i in enumerate(self.ids) if i not in exclude and (allow is None or i in allow)]
        best = sorted(ok, key=lambda j: -scores[j])[:k]
        return [(float(scores[j]), self.ids[j]) for j in best]
