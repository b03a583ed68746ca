"""Session intent: a re-rank that follows what a user is doing right now, from their live history.

The model ranks by what usually comes next, which on logs of bulk activity (ml-100k users rate dozens of
films in one sitting) is long-term taste: a run of clicks in another genre barely moves it (the figures are
in docs/realtime.md). This stage makes the answer follow the session, by category, without retraining:

- ``f_c``: the recency-weighted share of the user's last ``window`` events whose item is in category ``c``
  (weight ``decay ** age``, age 0 = newest);
- ``b_c``: the share of training interactions in ``c`` (what anyone's history looks like);
- lift ``l_c = max(0, f_c - b_c) / (1 - b_c)``: 0 when the session is no more about ``c`` than anyone's,
  1 when every recent event is;
- item ``i`` is ranked by ``score_i + boost * sum_c l_c^2 [i in c]``. That is an inner product too: the item
  vector extended with its category membership, against the user vector extended with ``boost * l^2``, so
  an exact index answers it in the same single matrix-vector product; an approximate index boosts its top
  ``depth`` candidates. ``boost = 0`` is the model alone (the exact twin), and so is a history whose recent
  categories are the population's mix.

The same functions serve online requests, batch scoring, Lightning predict and the training-time
evaluation (``twotower.evaluate``), so the metrics reported for a bundle are those of what it serves.
No torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
MAX_DENSE_MEMBERS = 1 << 28  # items x categories held as a dense bool matrix (256 MB)


@dataclass(frozen=True)
class IntentSettings:
    boost: float = 0.3  # cosine points added for an item in a category that is all of the recent events
    window: int = 20  # newest events read
    decay: float = 0.85  # weight of an event per step of age
    depth: int = 200  # approximate indexes: the candidates boosted (an exact index boosts every item)

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


def item_members(items: Any, category_names: Sequence[str]) -> np.ndarray | None:
    """(N, C) bool membership of an ``items.parquet`` frame (``categories`` as names) in catalog order; None
    when the catalog has no categories or is too large for a dense matrix."""
    if "categories" not in items:
        return None
    index = {str(name): i for i, name in enumerate(category_names)}
    if len(items) * len(index) > MAX_DENSE_MEMBERS:
        log.warning("category re-ranks off: %d items x %d categories is over the dense membership cap (%d); "
                    "a sparse membership is not implemented", len(items), len(index), MAX_DENSE_MEMBERS)  # fmt: skip
        return None
    return membership([[index.get(str(c), 0) for c in cats] for cats in items["categories"]], len(index))


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
        self._scale = 1.0 / (1.0 - self.baseline)  # (C,)
        self._offset = self.baseline * self._scale  # (C,): lift = max(share * scale - offset, 0)
        # one request: for a tail of t events, weights that sum to 1 (newest last)
        self._tail_weights = [(self._weights[w - t :] / self._weights[w - t :].sum()).astype(np.float32)
                              for t in range(w + 1)]  # fmt: skip
        self._scale32, self._offset32 = self._scale.astype(np.float32), self._offset.astype(np.float32)

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
        members = item_members(items, category_names)
        if members is None:
            return None
        counts = items["train_count"].to_numpy() if "train_count" in items else np.ones(len(members))
        return cls.build(members, counts, category_names, settings)

    # ---- lift -----------------------------------------------------------------------------------------
    def lift(self, recent: np.ndarray) -> np.ndarray:
        """(B, W) recent rows (-1 = none) -> (B, C) lift in [0, 1]."""
        present = recent >= 0  # (B, W)
        w = self._weights[None, :] * present  # (B, W)
        hits = self.members[np.where(present, recent, 0)]  # (B, W, C)
        total = w.sum(1, keepdims=True)  # (B, 1)
        share = np.einsum("bw,bwc->bc", w, hits) / np.maximum(total, 1e-12)  # (B, C)
        return np.where(total > 0, np.clip((share - self.baseline) * self._scale, 0.0, 1.0), 0.0)

    def history_lift(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B, C) lift of each history (catalog rows, oldest first)."""
        return self.lift(recent_rows(histories, self.settings.window))

    def padded_lift(self, items: np.ndarray) -> np.ndarray:
        """(B, C) lift of (B, L) model inputs: 1-based catalog rows, right-padded with 0."""
        return self.history_lift([row[row > 0] - 1 for row in items])

    def session_lift(self, history: np.ndarray) -> np.ndarray:
        """(C,) float32 lift of one history: :meth:`history_lift` for one request, in four numpy calls (a request
        pays for each call, whatever its size). The share is at most 1, so the lift is too."""
        tail = history[-self.settings.window :]
        share = self._tail_weights[len(tail)] @ self.members[tail]  # (C,) float32; no events: all zero
        return np.maximum(share * self._scale32 - self._offset32, 0.0)

    def query_weights(self, lift: np.ndarray) -> np.ndarray:
        """(..., C) lift -> (..., C) float32 ``boost * lift^2``: what extends the user vector."""
        return (self.settings.boost * lift * lift).astype(np.float32, copy=False)

    def explain(self, lift: np.ndarray) -> dict[str, float]:
        """(C,) lift of one history -> the categories it lifts, strongest first: {name: lift}."""
        active = sorted(((-v, c) for c, v in enumerate(lift.tolist()) if v > 0))  # ties: category order
        return {self.names[c]: round(-v, 3) for v, c in active}

    # ---- boosts ---------------------------------------------------------------------------------------
    def member_boosts(self, lift: np.ndarray, member: np.ndarray) -> np.ndarray:
        """(B, C) lift and (B, M, C) candidate membership -> (B, M) score additions (items outside the
        catalog's rows, such as ones added live, are passed by membership)."""
        return np.einsum("bmc,bc->bm", member.astype(np.float32), self.query_weights(lift))

    def boosts(self, lift: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(B, C) lift and (B, M) candidate rows (-1 = none) -> (B, M) score additions."""
        member = self.members[np.maximum(candidates, 0)]  # (B, M, C)
        return self.member_boosts(lift, member) * (candidates >= 0)

    def rerank(
        self, scores: np.ndarray, rows: np.ndarray, lift: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, M) candidate scores and rows (best first, -1 = none) and (B, C) lift -> (B, k) re-ranked
        (-inf / -1 padded): the approximate-index path, over the top ``depth`` candidates."""
        boosted = np.where(rows >= 0, scores + self.boosts(lift, rows), -np.inf)  # (B, M)
        order = np.argsort(-boosted, axis=1, kind="stable")[:, :k]  # ties keep the model's order
        out_scores = np.take_along_axis(boosted, order, 1).astype(np.float32)
        out_rows = np.where(np.isfinite(out_scores), np.take_along_axis(rows, order, 1), -1)
        return out_scores, out_rows

    def rerank_one(
        self, scores: np.ndarray, rows: np.ndarray, lift: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`rerank` of one request's candidates (all found, best first) in fewer numpy calls."""
        boosted = scores + self.members[rows] @ self.query_weights(lift)  # (M,)
        order = np.argsort(-boosted, kind="stable")[:k]
        return boosted[order].astype(np.float32), rows[order]
