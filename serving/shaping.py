"""What shapes a list after retrieval: the list re-rank's knobs and the "because" explanations, over a catalog.

The recommender hands over its score-ordered candidates; this module gathers what the re-rank reads about each
(vector, categories, whether it is in the popular head: :mod:`serving.core.diversify`) and names the history
items behind each answer (:mod:`serving.core.explain`). Items added since the bundle are read from the
catalog's changes snapshot. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.catalog import CatalogChanges
from serving.core.chooser import Features, ListChooser
from serving.core.diversify import similarity_vectors
from serving.core.explain import WINDOW, because_similar
from serving.core.listsettings import ListSettings


@dataclass(frozen=True)
class Ranking:
    """How a list was shaped: the knobs in force, and exploration's seed when it drew."""

    settings: ListSettings
    seed: int | None = None

    def as_dict(self) -> dict:
        out = self.settings.as_dict()
        if self.seed is not None:
            out["seed"] = self.seed
        return out


class ListShaper(ListChooser):
    """The list re-rank and explanations over a bundle's items (rows) and the changes made since."""

    def __init__(
        self, item_ids: list[str], row_of: dict[str, int], vectors: np.ndarray, members: np.ndarray | None,
        train_counts: np.ndarray,
    ) -> None:  # fmt: skip
        """``item_ids`` / ``row_of``: the bundle's rows and their external ids; the rest as :class:`ListChooser`."""
        super().__init__(vectors, members, train_counts)
        self.item_ids, self.row_of = item_ids, row_of

    # ---- what the re-rank reads ---------------------------------------------------------------------
    def _rows(self, ids: list[str], changes: CatalogChanges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bundle rows of ``ids`` (0 for added items), which are added, and their rows in the changes."""
        rows = np.fromiter((self.row_of.get(i, -1) for i in ids), np.int64, len(ids))
        live = rows < 0
        added = np.fromiter((changes.row_of[i] for i, new in zip(ids, live, strict=True) if new), np.int64)
        return np.maximum(rows, 0), live, added

    def features(self, ids: list[str], changes: CatalogChanges) -> Features:
        """(M, E) similarity vectors, (M, C) membership (None without categories) and (M,) head flags of
        answerable items (bundle rows, or items added since: never in the head)."""
        rows, live, added = self._rows(ids, changes)
        similar, members, head = self.rows_features(rows)  # gathers: copies
        if not live.any():
            return similar, members, head
        head[live] = False
        added_members = None
        if members is not None:
            added_members = changes.members(members.shape[1])[added]
            members[live] = added_members
        similar[live] = similarity_vectors(changes.vectors[added], added_members)
        return similar, members, head

    def item_vectors(self, ids: list[str], changes: CatalogChanges) -> np.ndarray:
        """(M, D) item vectors of answerable items (bundle rows or items added since)."""
        rows, live, added = self._rows(ids, changes)
        vectors = self.vectors[rows]
        if live.any():
            vectors[live] = changes.vectors[added]
        return vectors

    # ---- the list re-rank ---------------------------------------------------------------------------
    def shape_rows(
        self,
        scores: np.ndarray,
        rows: np.ndarray,
        k: int,
        settings: ListSettings,
        history: np.ndarray,
        seed: int,
    ) -> list[dict]:
        """The list of ``k`` items from bundle candidates: (M,) scores and rows, best first."""
        order, explored = self.choose_rows(scores, rows, k, settings, history, seed)
        ids, picked, values = self.item_ids, rows[order].tolist(), scores[order].tolist()
        items = [{"item_id": ids[r], "score": s} for r, s in zip(picked, values, strict=True)]
        return _mark(items, explored, settings)

    def shape_items(
        self, items: list[dict], k: int, settings: ListSettings, history: np.ndarray, seed: int,
        changes: CatalogChanges,
    ) -> list[dict]:  # fmt: skip
        """The list of ``k`` items from merged candidates (bundle and added items): ``{"item_id", "score"}``."""
        if not items:
            return items
        scores = np.fromiter((x["score"] for x in items), np.float32, len(items))
        features = self.features([x["item_id"] for x in items], changes)
        order, explored = self.choose(scores, features, k, settings, history, seed)
        return _mark([items[j] for j in order.tolist()], explored, settings)

    # ---- explanations -------------------------------------------------------------------------------
    def explain(self, items: list[dict], history: np.ndarray, changes: CatalogChanges) -> None:
        """Adds ``because`` to each item: its most similar items among the newest history events."""
        if not items:
            return
        vectors = self.item_vectors([x["item_id"] for x in items], changes)
        recent = history[-WINDOW:]
        ids = self.item_ids
        for item, rows in zip(items, because_similar(vectors, recent, self.vectors[recent]), strict=True):
            item["because"] = [ids[r] for r in rows]


def _mark(items: list[dict], explored: np.ndarray, settings: ListSettings) -> list[dict]:
    """With exploration on, every item says whether it fills an exploration slot."""
    if settings.explore:
        for item, flag in zip(items, explored.tolist(), strict=True):
            item["explore"] = flag
    return items
