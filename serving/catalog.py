"""The catalog a recommender answers from: the bundle's items plus the changes made since, without retraining.

Added items get their vector from the item tower's category part (the bundle's ``category_embeddings.npy``),
the same vector ``TwoTower.encode_new_items`` gives (tested). They are searched exactly beside the bundle's
index and merged by score; removed bundle items are filtered inside the index search. The changes are one
immutable :class:`CatalogChanges` snapshot: a change builds a new one under a lock and swaps it in, so a
request in flight keeps the snapshot it started with and concurrent changes are never lost. A ``persist``
callback (the history store's write) runs after the new snapshot is built and before it is swapped in: a
change is visible only once it is durable, and a failed write leaves nothing changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field, replace

import numpy as np

from serving.core.intent import membership


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
class CatalogChanges:
    """Items added since the bundle (searched exactly) and removed bundle rows, as one immutable snapshot."""

    dim: int
    ids: tuple[str, ...] = ()
    vectors: np.ndarray | None = None  # (M, D) float32
    row_of: dict[str, int] = field(default_factory=dict)
    removed_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # bundle rows
    categories: tuple[tuple[int, ...], ...] = ()  # category indices of each added item
    retired: frozenset[str] = frozenset()  # added items taken down (or not replayable): known, never answered
    removed: frozenset[int] = field(init=False, repr=False)  # removed_rows as a set, for membership tests
    known: frozenset[str] = field(init=False, repr=False)  # ids added since the bundle, retired ones too

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed", frozenset(self.removed_rows.tolist()))
        object.__setattr__(self, "known", frozenset(self.ids) | self.retired)
        if self.vectors is None:
            object.__setattr__(self, "vectors", np.zeros((0, self.dim), np.float32))
        if len(self.categories) != len(self.ids):
            object.__setattr__(self, "categories", tuple(() for _ in self.ids))

    def with_added(
        self, ids: Sequence[str], vectors: np.ndarray, categories: Sequence[Sequence[int]] | None = None
    ) -> CatalogChanges:
        """A snapshot with ``ids`` added (or their vectors replaced when already added)."""
        keep = [i for i in self.ids if i not in set(ids)]
        kept = self.vectors[[self.row_of[i] for i in keep]] if keep else np.zeros((0, self.dim), np.float32)
        all_ids = tuple(keep) + tuple(ids)
        stacked = np.vstack([kept, np.asarray(vectors, np.float32).reshape(len(ids), self.dim)])
        cats = tuple(self.categories[self.row_of[i]] for i in keep)
        cats += tuple(tuple(c) for c in categories) if categories is not None else tuple(() for _ in ids)
        return CatalogChanges(self.dim, all_ids, stacked, {i: r for r, i in enumerate(all_ids)}, self.removed_rows,
                         cats, self.retired - set(ids))  # fmt: skip

    def with_removed(self, ids: Iterable[str], bundle_row_of: dict[str, int]) -> CatalogChanges:
        """A snapshot without ``ids``: added ones are dropped (and retired), bundle ones are filtered from now on."""
        ids = set(ids)
        rows = [bundle_row_of[i] for i in ids if i in bundle_row_of]
        removed = np.union1d(self.removed_rows, np.asarray(rows, np.int64)).astype(np.int64)
        keep = [i for i in self.ids if i not in ids]
        vectors = self.vectors[[self.row_of[i] for i in keep]] if keep else None
        cats = tuple(self.categories[self.row_of[i]] for i in keep)
        retired = self.retired | {i for i in ids if i in self.row_of}
        return CatalogChanges(
            self.dim, tuple(keep), vectors, {i: r for r, i in enumerate(keep)}, removed, cats, retired
        )

    def with_retired(self, ids: Iterable[str]) -> CatalogChanges:
        """A snapshot that knows ``ids`` (ids this snapshot does not hold) as taken-down added items."""
        return replace(self, retired=self.retired | (set(ids) - set(self.row_of)))

    def restored(self, bundle_rows: Iterable[int]) -> CatalogChanges:
        """A snapshot where these bundle rows are no longer removed (an item re-added)."""
        removed = np.setdiff1d(self.removed_rows, np.fromiter(bundle_rows, np.int64))
        return CatalogChanges(
            self.dim, self.ids, self.vectors, self.row_of, removed, self.categories, self.retired
        )

    def members(self, n_categories: int) -> np.ndarray:
        """(M, C) bool category membership of the added items."""
        return membership(self.categories, n_categories)

    def top(
        self,
        query: np.ndarray,
        k: int,
        exclude: set[str],
        allow: set[str] | None,
        extra: np.ndarray | None = None,
    ) -> list[tuple[float, str]]:
        """Exact top-k ``(score, id)`` among the added items passing the filters (``extra`` (M,): added to
        each item's score, such as a re-rank's boost)."""
        if not self.ids:
            return []
        scores = self.vectors @ query  # (M,)
        if extra is not None:
            scores = scores + extra
        ok = [j for j, i in enumerate(self.ids) if i not in exclude and (allow is None or i in allow)]
        best = sorted(ok, key=lambda j: -scores[j])[:k]
        return [(float(scores[j]), self.ids[j]) for j in best]


_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False


class ItemExists(ValueError):
    """An item to add is already in the catalog (the HTTP layer answers 409)."""


class Catalog:
    """The bundle's items (rows of its index) and the changes since: owns the id maps and the snapshot."""

    def __init__(
        self, item_ids: list[str], categories: Sequence[str], category_vectors: np.ndarray, normalize: bool
    ) -> None:
        """``category_vectors`` (C, D): the item tower's category table; ``normalize``: unit-norm item vectors."""
        self.item_ids = item_ids  # bundle row -> external id
        self.row_of = {item: i for i, item in enumerate(item_ids)}
        self.category_of = {name: i for i, name in enumerate(categories)}
        self._category_vectors = category_vectors
        self._normalize = normalize
        self.changes = CatalogChanges(category_vectors.shape[1])  # swapped whole, never mutated
        self._lock = threading.Lock()  # one change at a time: each builds on the latest snapshot

    def __len__(self) -> int:
        """Rows of the bundle's index (added items are searched beside it)."""
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        """Whether an item can be answered now: a bundle item not taken down, or one added since."""
        item_id, changes = str(item_id), self.changes
        row = self.row_of.get(item_id)
        if row is not None:
            return row not in changes.removed
        return item_id in changes.row_of

    def knows(self, item_id: str) -> bool:
        """Whether a history may hold the item: one of the bundle's or one added since, taken down or not (a
        page shown before a removal still sends clicks on it; the item is never answered again)."""
        return item_id in self.row_of or item_id in self.changes.known

    def rows_of(self, item_ids: Iterable[str]) -> np.ndarray:
        """int64 bundle rows of the known ids among ``item_ids`` (unknown ids are skipped)."""
        if isinstance(item_ids, Sized) and len(item_ids) == 0:
            return _NO_ROWS
        row_of = self.row_of
        return np.fromiter((row_of[i] for i in map(str, item_ids) if i in row_of), np.int64)

    def new_item_vector(self, categories: Sequence[str]) -> np.ndarray:
        """(D,) vector of an item known only by its categories (the item tower's feature part)."""
        return category_vector(self._category_vectors, self.category_of, list(categories), self._normalize)

    def add_items(
        self, items: Sequence[tuple[str, Sequence[str]]], persist: Callable[[], None] | None = None
    ) -> list[str]:
        """Add ``(item_id, categories)`` items; re-adding a removed bundle item restores it. All or nothing.

        Raises :class:`ItemExists` for an id already in the catalog and ValueError (naming the item) for
        unknown categories or an id listed twice; nothing changes then, nor when ``persist`` raises."""
        with self._lock:
            changes, restored, new, vectors, cats, seen = self.changes, [], [], [], [], set()
            removed = changes.removed
            for item_id, categories in items:
                item_id = str(item_id)
                row = self.row_of.get(item_id)
                if row is not None and row in removed:
                    restored.append(row)
                    continue
                if row is not None or item_id in changes.row_of:
                    raise ItemExists(f"item {item_id!r} is already in the catalog")
                if item_id in seen:
                    raise ValueError(f"item {item_id!r} is listed twice")
                seen.add(item_id)
                try:
                    vectors.append(self.new_item_vector(categories))
                except ValueError as exc:
                    raise ValueError(f"item {item_id!r}: {exc}") from None
                new.append(item_id)
                cats.append(tuple(self.category_of[c] for c in dict.fromkeys(categories)))
            if restored:
                changes = changes.restored(restored)
            if new:
                changes = changes.with_added(new, np.stack(vectors), cats)
            if persist is not None:
                persist()
            self.changes = changes
        return new + [self.item_ids[r] for r in restored]

    def retire(self, item_ids: Iterable[str]) -> None:
        """Know ``item_ids`` as added items taken down: their events are accepted, they are never answered
        (a replay's removals of items a new bundle lacks, and added items it cannot take)."""
        with self._lock:
            self.changes = self.changes.with_retired(str(i) for i in item_ids if str(i) not in self.row_of)

    def remove_items(self, item_ids: Sequence[str], persist: Callable[[], None] | None = None) -> list[str]:
        """Take items out of every answer from now on; raises KeyError naming unknown ids (nothing changes, nor
        when ``persist`` raises)."""
        item_ids = [str(i) for i in item_ids]
        with self._lock:
            changes = self.changes
            removed = changes.removed
            unknown = [i for i in item_ids if self.row_of.get(i, -1) in removed or
                       (i not in self.row_of and i not in changes.row_of)]  # fmt: skip
            if unknown:
                raise KeyError(f"unknown items {unknown}")
            after = changes.with_removed(item_ids, self.row_of)
            if persist is not None:
                persist()
            self.changes = after
        return item_ids
