"""Session intent: a re-rank that follows what a user is doing right now, from their live history.

The model ranks by what usually comes next, which on logs of bulk activity (ml-100k users rate dozens of
films in one sitting) is long-term taste: fifteen romance clicks barely move it. This stage makes the
answer follow the session, by category, without retraining:

- ``f_c``: the recency-weighted share of the user's last ``window`` events whose item is in category ``c``
  (weight ``decay ** age``, age 0 = newest);
- ``b_c``: the share of training interactions in ``c`` (what anyone's history looks like);
- lift ``l_c = max(0, f_c - b_c) / (1 - b_c)``: 0 when the session is no more about ``c`` than anyone's,
  1 when every recent event is;
- each of the model's top ``depth`` candidates gets ``score + boost * max_c(l_c * [item in c]) ** 2`` and the
  top k of those are served. ``boost = 0`` is the model alone (the exact twin), and so is a history whose
  recent categories are the population's mix.

The same functions re-rank online requests, batch scoring and the training-time evaluation
(``twotower.evaluate``), so the metrics reported for a bundle are those of what it serves. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class IntentSettings:
    boost: float = 0.7  # cosine points added for an item in a category that is all of the recent events
    window: int = 20  # newest events read
    decay: float = 0.85  # weight of an event per step of age
    depth: int = 200  # model candidates re-ranked (the rest keep the model's order after them)

    def __post_init__(self) -> None:
        if self.boost < 0 or self.window < 1 or not 0 < self.decay <= 1 or self.depth < 1:
            raise ValueError(
                f"invalid intent settings {self}: boost >= 0, window >= 1, 0 < decay <= 1, depth >= 1"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> IntentSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def membership(item_categories: Sequence[Sequence[int]], n_categories: int) -> np.ndarray:
    """(N, C) bool: row i is True at the category indices of item i (index 0 = no category, never set)."""
    members = np.zeros((len(item_categories), n_categories), dtype=bool)
    for row, cats in enumerate(item_categories):
        members[row, [c for c in cats if 0 < c < n_categories]] = True
    return members


def recent_rows(histories: Sequence[np.ndarray], window: int) -> np.ndarray:
    """(B, W) the newest ``window`` catalog rows of each history, newest in the last column, -1 before."""
    out = np.full((len(histories), window), -1, dtype=np.int64)
    for b, rows in enumerate(histories):
        tail = rows[-window:]
        if len(tail):
            out[b, window - len(tail) :] = tail
    return out


class CategoryIntent:
    """The session-intent re-rank over a catalog's category membership."""

    def __init__(
        self, members: np.ndarray, baseline: np.ndarray, names: Sequence[str], settings: IntentSettings
    ):
        self.members = np.asarray(members, dtype=bool)  # (N, C)
        self.baseline = np.clip(np.asarray(baseline, dtype=np.float64), 0.0, 1.0 - 1e-6)  # (C,)
        self.names = list(names)
        self.settings = settings
        w = settings.window
        self._weights = settings.decay ** np.arange(w - 1, -1, -1, dtype=np.float64)  # (W,), newest last

    @classmethod
    def build(
        cls, members: np.ndarray, counts: np.ndarray, names: Sequence[str], settings: IntentSettings
    ) -> CategoryIntent | None:
        """From (N, C) membership and per-item training interaction counts; None when it cannot act (no
        categories, or ``boost`` 0)."""
        members = np.asarray(members, dtype=bool)
        if settings.boost == 0 or not members.any():
            return None
        counts = np.asarray(counts, dtype=np.float64)
        total = counts.sum()
        baseline = (members * counts[:, None]).sum(0) / total if total > 0 else members.mean(0)
        return cls(members, baseline, names, settings)

    @classmethod
    def from_items(
        cls, items: Any, category_names: Sequence[str], settings: IntentSettings
    ) -> CategoryIntent | None:
        """From an ``items.parquet`` frame (``categories`` as names, ``train_count``) in catalog order."""
        if "categories" not in items:
            return None
        index = {str(name): i for i, name in enumerate(category_names)}
        rows = [[index.get(str(c), 0) for c in cats] for cats in items["categories"]]
        counts = items["train_count"].to_numpy() if "train_count" in items else np.ones(len(rows))
        return cls.build(membership(rows, len(index)), counts, category_names, settings)

    def lift(self, recent: np.ndarray) -> np.ndarray:
        """(B, W) recent rows (-1 = none) -> (B, C) lift in [0, 1]."""
        present = recent >= 0  # (B, W)
        w = self._weights[None, :] * present  # (B, W)
        hits = self.members[np.where(present, recent, 0)]  # (B, W, C)
        total = w.sum(1, keepdims=True)  # (B, 1)
        share = np.einsum("bw,bwc->bc", w, hits) / np.maximum(total, 1e-12)  # (B, C)
        lift = (share - self.baseline) / (1.0 - self.baseline)
        return np.where(total > 0, np.clip(lift, 0.0, 1.0), 0.0)

    def boosts(self, lift: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(B, C) lift and (B, M) candidate rows (-1 = none) -> (B, M) score additions."""
        active = np.flatnonzero(lift.max(0) > 0)  # categories any row lifts: usually a few
        if not len(active):
            return np.zeros(candidates.shape, dtype=np.float32)
        member = self.members[np.maximum(candidates, 0)][:, :, active]  # (B, M, A)
        return self.member_boosts(lift[:, active], member) * (candidates >= 0)

    def member_boosts(self, lift: np.ndarray, member: np.ndarray) -> np.ndarray:
        """(B, C) lift and (B, M, C) candidate membership -> (B, M) score additions (items outside the
        catalog's rows, such as ones added live, are passed by membership)."""
        strongest = (member * lift[:, None, :]).max(-1, initial=0.0)  # (B, M)
        return (self.settings.boost * strongest**2).astype(np.float32)

    def history_lift(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B, C) lift of each history (catalog rows, oldest first)."""
        return self.lift(recent_rows(histories, self.settings.window))

    def rerank(
        self, scores: np.ndarray, rows: np.ndarray, lift: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, M) candidate scores and rows (best first, -1 = none) and (B, C) lift -> (B, k) re-ranked
        (-inf / -1 padded)."""
        boosted = np.where(rows >= 0, scores + self.boosts(lift, rows), -np.inf)  # (B, M)
        order = np.argsort(-boosted, axis=1, kind="stable")[:, :k]  # ties keep the model's order
        out_scores = np.take_along_axis(boosted, order, 1).astype(np.float32)
        out_rows = np.where(np.isfinite(out_scores), np.take_along_axis(rows, order, 1), -1)
        return out_scores, out_rows

    def explain(self, lift: np.ndarray) -> dict[str, float]:
        """(C,) lift of one history -> the categories it lifts, strongest first: {name: lift}."""
        order = np.argsort(-lift, kind="stable")
        return {self.names[c]: round(float(lift[c]), 3) for c in order if lift[c] > 0}
