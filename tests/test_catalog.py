"""The live catalog: items added by their categories, taken down, restored; one snapshot per change, no lost
change under concurrent writers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serving.catalog import Catalog, ItemExists

CATEGORIES = ["<none>", "a", "b", "c"]


@pytest.fixture
def catalog():
    table = np.random.default_rng(0).normal(size=(len(CATEGORIES), 8)).astype(np.float32)
    return Catalog([f"i{n}" for n in range(20)], CATEGORIES, table, normalize=True)


def test_added_items_get_their_category_vector_and_can_be_removed(catalog):
    assert catalog.add_items([("new", ["a", "b"])]) == ["new"]
    expected = catalog._category_vectors[[1, 2]].mean(0)
    np.testing.assert_allclose(catalog.changes.vectors[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert "new" in catalog and catalog.changes.categories == ((1, 2),)
    assert catalog.remove_items(["new", "i3"]) == ["new", "i3"]
    assert "new" not in catalog and "i3" not in catalog and catalog.changes.removed_rows.tolist() == [3]
    assert catalog.knows("i3") and catalog.knows(
        "new"
    )  # a taken-down item, bundle or added, may stay in histories
    assert catalog.add_items([("i3", ["a"])]) == ["i3"] and "i3" in catalog  # restored, its trained vector


def test_bad_changes_change_nothing(catalog):
    before = catalog.changes
    with pytest.raises(ItemExists, match="'i1' is already in the catalog"):
        catalog.add_items([("fresh", ["a"]), ("i1", ["a"])])
    with pytest.raises(ValueError, match="unknown categories"):
        catalog.add_items([("fresh", ["zzz"])])
    with pytest.raises(ValueError, match="listed twice"):
        catalog.add_items([("fresh", ["a"]), ("fresh", ["b"])])
    with pytest.raises(KeyError, match="ghost"):
        catalog.remove_items(["i2", "ghost"])
    assert catalog.changes is before and "fresh" not in catalog and "i2" in catalog
    assert not isinstance(ValueError("x"), ItemExists) and issubclass(ItemExists, ValueError)


def test_concurrent_changes_are_never_lost(catalog):
    """16 threads add and remove at once: every acknowledged change is in the final snapshot."""
    added, removed = [], []

    def worker(t: int) -> None:
        for n in range(25):
            item = f"t{t}-{n}"
            added.extend(catalog.add_items([(item, ["abc"[n % 3]])]))
            if n % 2:
                removed.extend(catalog.remove_items([item]))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    live = set(catalog.changes.ids)
    assert len(added) == 400 and len(removed) == 192
    assert live == set(added) - set(removed)
    assert len(catalog.changes.vectors) == len(catalog.changes.ids) == len(catalog.changes.categories)


def test_a_change_is_visible_only_after_it_is_persisted(catalog):
    """The store's write runs before the swap: when it fails, nothing changed and a retry can succeed."""
    during = []

    def failing(item: str):
        def write() -> None:
            during.append(item in catalog)
            raise OSError("disk full")

        return write

    with pytest.raises(OSError, match="disk full"):
        catalog.add_items([("late", ["a"])], persist=failing("late"))
    with pytest.raises(OSError, match="disk full"):
        catalog.remove_items(["i4"], persist=failing("i4"))
    assert during == [False, True]  # not yet added / still served while the write runs
    assert "late" not in catalog and "i4" in catalog
    assert catalog.add_items([("late", ["a"])], persist=lambda: None) == ["late"] and "late" in catalog


def test_a_removed_added_item_is_retired_known_but_never_answered_until_re_added(catalog):
    catalog.add_items([("new", ["a"]), ("other", ["b"])])
    catalog.remove_items(["new"])
    assert catalog.knows("new") and "new" not in catalog and catalog.changes.ids == ("other",)
    assert catalog.changes.retired == {"new"} and "new" in catalog.changes.known
    with pytest.raises(KeyError, match="new"):
        catalog.remove_items(["new"])  # already taken down: unknown to a second removal (404)
    assert catalog.add_items([("new", ["c"])]) == ["new"] and "new" in catalog  # added again, as new
    assert catalog.changes.retired == frozenset() and catalog.changes.known == {"other", "new"}
    catalog.retire(["gone", "i4", "new"])  # a replay's removals: bundle and live items are left as they are
    assert catalog.changes.retired == {"gone"} and catalog.knows("gone") and "gone" not in catalog
    assert "i4" in catalog and "new" in catalog
