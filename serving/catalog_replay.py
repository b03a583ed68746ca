"""Replaying the live catalog changes a history store holds on a freshly loaded bundle (start, reload), and
what a change records (a restored bundle item is recorded with its bundle categories)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from serving.historystore import HistoryStore
from serving.itemtext import table
from serving.recommender import Recommender

log = logging.getLogger(__name__)


def restored_categories(rec: Recommender, item_id: str) -> list[str] | None:
    """The bundle categories of a taken-down bundle item (re-adding it restores it as it was, whatever the
    request says: that is what a store records and a later bundle replays); None for any other id."""
    catalog = rec.catalog
    row = catalog.row_of.get(item_id)
    if row is None or row not in catalog.changes.removed:
        return None
    return list(table(rec).categories[row])


@dataclass(frozen=True)
class Replayed:
    """What :func:`apply_catalog_changes` did: ``skipped`` added items the bundle cannot take (categories it
    lacks), kept in the store for a later bundle and retired here (their events are still accepted)."""

    added: int = 0
    removed: int = 0
    skipped: tuple[str, ...] = ()


def apply_catalog_changes(rec: Recommender, store: HistoryStore) -> Replayed:
    """Replay the store's item additions and removals on a freshly loaded recommender.

    Items a new bundle already contains (a retrain saw them) keep their trained vectors. An added item whose
    categories the bundle lacks is skipped with a warning naming it, not a reason to refuse the bundle: the
    cause is the state, not the bundle, and refusing would block every reload and restart.
    """
    catalog = rec.catalog
    changes = store.catalog_changes()
    add, skipped = [], []
    for item_id, action, cats in changes:
        if action != "add" or item_id in catalog.row_of:
            continue
        try:
            catalog.new_item_vector(cats)
        except ValueError as exc:
            skipped.append((item_id, str(exc).split(";", 1)[0]))
            continue
        add.append((item_id, cats))
    if add:
        catalog.add_items(add)
    if skipped:
        log.warning("%d added item(s) not replayed on bundle %s (categories it lacks); they "
                    "stay stored for a later bundle: %s", len(skipped), rec.model_version,
                    "; ".join(f"{i!r}: {why}" for i, why in skipped[:20]) + (" ..." if len(skipped) > 20 else ""))  # fmt: skip
    gone = [i for i, action, _ in changes if action == "remove" and i in catalog]
    if gone:
        catalog.remove_items(gone)
    # removed added items (and skipped ones) stay known: their late events are accepted, as for bundle items
    catalog.retire([i for i, action, _ in changes if action == "remove" and i not in catalog.row_of
                    and i not in catalog.changes.row_of] + [i for i, _ in skipped])  # fmt: skip
    return Replayed(len(add), len(gone), tuple(i for i, _ in skipped))
