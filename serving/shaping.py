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
from serving.core.diversify import (
    Candidates,
    ListSettings,
    head_mask,
    history_mix,
    rerank_list,
    similarity_vectors,
)
from serving.core.explain import WINDOW, because_similar


@dataclass(frozen=True)
class Ranking:
    """How a list was shaped: the knobs in force, and exploration's seed when it drew."""

    settings: ListSettings
    seed: int | None = None

    def as_dict(self) -> dict:
        s = self.settings
        out = {"diversity": s.diversity, "max_per_category": s.max_per_category, "calibrate": s.calibrate,
               "explore": s.explore, "depth": s.depth}  # fmt: skip
        if self.seed is not None:
            out["seed"] = self.seed
        return out


class ListShaper:
    """The list re-rank and explanations over a bundle's items (rows) and the changes made since."""

    def __init__(
        self, item_ids: list[str], row_of: dict[str, int], vectors: np.ndarray, members: np.ndarray | None,
        train_counts: np.ndarray,
    ) -> None:  # fmt: skip
        """``vectors`` (N, D) item vectors; ``members`` (N, C) bool categories (None: no categories);
        ``train_counts`` (N,) training interactions (the popular head)."""
        self.item_ids, self.row_of, self.vectors, self.members = item_ids, row_of, vectors, members
        self.head = head_mask(train_counts)  # (N,)
        self.similar = similarity_vectors(vectors, members)  # (N, E) what the diversity knob compares

    # ---- what the re-rank reads ---------------------------------------------------------------------
    def _rows(self, ids: list[str], changes: CatalogChanges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bundle rows of ``ids`` (0 for added items), which are added, and their rows in the changes."""
        rows = np.fromiter((self.row_of.get(i, -1) for i in ids), np.int64, len(ids))
        live = rows < 0
        added = np.fromiter((changes.row_of[i] for i, new in zip(ids, live, strict=True) if new), np.int64)
        return np.maximum(rows, 0), live, added

    def features(
        self, ids: list[str], changes: CatalogChanges
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
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

    def rows_features(
        self, rows: np.ndarray, with_members: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """:meth:`features` of bundle rows: gathers (``with_members=False``: no membership, for a re-rank
        that reads none: diversity alone)."""
        members = self.members[rows] if self.members is not None and with_members else None
        return self.similar[rows], members, self.head[rows]

    def item_vectors(self, ids: list[str], changes: CatalogChanges) -> np.ndarray:
        """(M, D) item vectors of answerable items (bundle rows or items added since)."""
        rows, live, added = self._rows(ids, changes)
        vectors = self.vectors[rows]
        if live.any():
            vectors[live] = changes.vectors[added]
        return vectors

    # ---- the list re-rank ---------------------------------------------------------------------------
    def choose(
        self,
        scores: np.ndarray,
        features: tuple[np.ndarray, np.ndarray | None, np.ndarray],
        k: int,
        settings: ListSettings,
        history: np.ndarray,
        seed: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate positions of the list (L,) and their exploration flags (L,), from score-ordered
        candidates: (M,) scores and their :meth:`features`; ``history`` (H,) bundle rows."""
        vectors, members, head = features
        wants_mix = self.members is not None and (settings.calibrate or settings.explore)
        mix = history_mix(self.members[history]) if wants_mix else None
        rng = np.random.default_rng(seed) if settings.explore else None
        scores = np.asarray(scores, dtype=np.float32)
        chosen = rerank_list(Candidates(scores, vectors, members, head), k, settings, mix, rng)
        return chosen.order, chosen.explored

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
        features = self.rows_features(
            rows, with_members=bool(settings.max_per_category or settings.calibrate or settings.explore)
        )
        order, explored = self.choose(scores, features, k, settings, history, seed)
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
