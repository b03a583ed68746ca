"""What the page shows about an item: its title and category names, and a title search over the catalog.

Built once per recommender (a reload brings a new one, so a new table) from the bundle's ``items.parquet``;
items added since the bundle have their categories and no title (search finds them by id). Nothing here is personal data, so the
endpoints over it are open.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from serving.recommender import Recommender


@dataclass(frozen=True)
class ItemText:
    item_id: str
    title: str | None
    categories: list[str]
    popularity: int


class ItemTable:
    """Titles, categories and training counts of a bundle's items, in catalog order."""

    def __init__(self, rec: Recommender) -> None:
        items = rec.bundle.items
        n = len(rec.item_ids)
        titles = items.get("title")
        self.titles: list[str | None] = (
            [None if t is None or t != t else str(t) for t in titles] if titles is not None else [None] * n
        )
        self.lowered = [t.casefold() if t else "" for t in self.titles]
        cats = items.get("categories")
        self.categories: list[list[str]] = (
            [[str(c) for c in (row if row is not None else [])] for row in cats]
            if cats is not None
            else [[]] * n
        )
        counts = items["train_count"].to_numpy() if "train_count" in items else np.zeros(n, np.int64)
        self.popularity = [int(c) for c in counts]
        self.order = np.argsort(-counts, kind="stable")  # search answers the most-watched matches first
        self.rows_by_folded_id: dict[str, list[int]] = {}  # rows in self.order's order
        for row in self.order:
            self.rows_by_folded_id.setdefault(rec.item_ids[row].casefold(), []).append(int(row))


_tables: weakref.WeakKeyDictionary[Recommender, ItemTable] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def table(rec: Recommender) -> ItemTable:
    """The recommender's table, built on first use."""
    with _lock:
        found = _tables.get(rec)
        if found is None:
            found = _tables[rec] = ItemTable(rec)
        return found


def describe(rec: Recommender, item_id: str) -> ItemText | None:
    """The item as the page shows it; None when it is not in the catalog now (never held, or taken down:
    a deleted resource answers 404, as a client of ``DELETE /items/{id}`` expects)."""
    if item_id not in rec.catalog:
        return None
    row = rec.catalog.row_of.get(item_id)
    if row is not None:
        t = table(rec)
        return ItemText(item_id, t.titles[row], t.categories[row], t.popularity[row])
    changes = rec.catalog.changes
    added = changes.row_of.get(item_id)
    if added is None:
        return None
    names = rec.bundle.categories
    return ItemText(item_id, None, [names[c] for c in changes.categories[added] if 0 < c < len(names)], 0)


def search(rec: Recommender, query: str, limit: int) -> list[ItemText]:
    """Items now in the catalog whose id is ``query`` or whose title holds it (case-insensitive): those by id
    first (a bundle item or one added since, which has no title to match), then those by title, most
    popular first. Items taken down are not found."""
    needle = query.casefold()
    t = table(rec)
    out = [found for found in (describe(rec, i) for i in _ids_matching(rec, t, needle)) if found is not None]
    seen = {x.item_id for x in out}
    for row in t.order:
        if len(out) >= limit:
            break
        item_id = rec.item_ids[row]
        if needle in t.lowered[row] and item_id not in seen and item_id in rec.catalog:
            out.append(ItemText(item_id, t.titles[row], t.categories[row], t.popularity[row]))
    return out[:limit]


def _ids_matching(rec: Recommender, t: ItemTable, needle: str) -> list[str]:
    """Ids equal to ``needle`` case-folded: the bundle's (most popular first), then those added since."""
    bundle = t.rows_by_folded_id.get(needle, [])
    added = [i for i in rec.catalog.changes.ids if i.casefold() == needle and i not in rec.catalog.row_of]
    return [rec.item_ids[row] for row in bundle] + added
