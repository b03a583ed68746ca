"""The list re-rank over a catalog's rows: what it reads about each candidate (similarity vector, categories,
popular head) and the call to :func:`serving.core.diversify.rerank_list`.

One :class:`ListChooser` serves the service (:class:`serving.shaping.ListShaper` extends it with ids, items
added live and explanations) and training's evaluation of what a bundle serves (:mod:`twotower.served`), so
the evaluated list is the served list by construction. No torch.
"""

from __future__ import annotations

import numpy as np

from serving.core.diversify import (
    Candidates,
    head_mask,
    history_mix,
    rerank_list,
    similarity_vectors,
)
from serving.core.listsettings import ListSettings

Features = tuple[
    np.ndarray, np.ndarray | None, np.ndarray
]  # (M, E) similarity vectors, (M, C) members, (M,) head


class ListChooser:
    """The list re-rank over ``N`` catalog rows."""

    def __init__(self, vectors: np.ndarray, members: np.ndarray | None, train_counts: np.ndarray) -> None:
        """``vectors`` (N, D) item vectors; ``members`` (N, C) bool categories (None: no categories);
        ``train_counts`` (N,) training interactions (the popular head)."""
        self.vectors, self.members = vectors, members
        self.head = head_mask(train_counts)  # (N,)
        self.similar = similarity_vectors(vectors, members)  # (N, E) what the diversity knob compares

    def rows_features(self, rows: np.ndarray, with_members: bool = True) -> Features:
        """What the re-rank reads about catalog rows: gathers (``with_members=False``: no membership, for a
        re-rank that reads none: diversity alone)."""
        members = self.members[rows] if self.members is not None and with_members else None
        return self.similar[rows], members, self.head[rows]

    def choose(
        self,
        scores: np.ndarray,
        features: Features,
        k: int,
        settings: ListSettings,
        history: np.ndarray,
        seed: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate positions of the list (L,) and their exploration flags (L,), from score-ordered
        candidates: (M,) scores and their features; ``history`` (H,) catalog rows."""
        vectors, members, head = features
        wants_mix = self.members is not None and (settings.calibrate or settings.explore)
        mix = history_mix(self.members[history]) if wants_mix else None
        rng = np.random.default_rng(seed) if settings.explore else None
        scores = np.asarray(scores, dtype=np.float32)
        chosen = rerank_list(Candidates(scores, vectors, members, head), k, settings, mix, rng)
        return chosen.order, chosen.explored

    def choose_rows(
        self,
        scores: np.ndarray,
        rows: np.ndarray,
        k: int,
        settings: ListSettings,
        history: np.ndarray,
        seed: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`choose` over catalog rows (M,) with their (M,) scores, best first."""
        with_members = bool(settings.max_per_category or settings.calibrate or settings.explore)
        return self.choose(scores, self.rows_features(rows, with_members), k, settings, history, seed)
