"""What the recommender returns and the histories it reads: plain data, no model code."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from serving.core.history import UNKNOWN, History
from serving.core.intent import CategoryIntent


@dataclass
class Recommendation:
    """What ``Recommender.recommend`` returns: the items plus how they were made."""

    items: list[dict]
    source: str  # "model" or "popularity" (fallback for unknown users / empty histories)
    unknown_items: list[str] = field(default_factory=list)  # history ids not in the catalog (ignored)
    history_length: int = 0
    lift: np.ndarray | None = None  # (C,) the session's category lift, when the re-rank acted
    explainer: CategoryIntent | None = None
    model_version: str = ""  # the bundle that answered
    ranking: Any = None  # serving.shaping.Ranking: the list re-rank's settings and seed, when it acted

    @property
    def intent(self) -> dict[str, float]:
        """Categories the session lifts, strongest first: why the list leans (computed on access)."""
        return self.explainer.explain(self.lift) if self.lift is not None else {}


@dataclass
class ResolvedHistory:
    """A history resolved against the catalog: model inputs, plus the ids the model cannot read."""

    history: History  # events on bundle items (what the user tower reads)
    unknown: list[str] = field(default_factory=list)  # ids in no catalog: ignored
    live_seen: set[str] = field(default_factory=set)  # items added after training: excluded, not encoded
    n_events: int = 0  # stored events this was resolved from (unknown ones included)
    last_ts: float = float("nan")  # time of the newest event

    def extended(self, more: ResolvedHistory, max_events: int) -> ResolvedHistory | None:
        """This history followed by ``more`` (newer events), cut to the newest ``max_events`` as a store would
        keep them; None when the cut cannot be made here (dropped unknown events make counts ambiguous, or
        ``more`` alone is over the bound).

        After a cut the new first event's gap is unknown (-1), as a re-read of the store gives: its predecessor
        is no longer stored."""
        h, m = self.history, more.history
        total = self.n_events + more.n_events
        drop = max(0, total - max_events)
        if drop and (len(h) != self.n_events or drop > len(h)):
            return None
        joined = h.concat(m, drop)
        if drop and len(joined):
            gaps = joined.gaps.copy()  # (E,)
            gaps[0] = UNKNOWN
            joined = replace(joined, gaps=gaps)
        return ResolvedHistory(joined, self.unknown + more.unknown, self.live_seen | more.live_seen,
                               total - drop, more.last_ts)  # fmt: skip


def merge_top(first: list[dict], extra: list[tuple[float, str]], k: int) -> list[dict]:
    """Merge two score-sorted result lists into the top k."""
    if not extra:
        return first
    merged = first + [{"item_id": i, "score": s} for s, i in extra]
    return sorted(merged, key=lambda x: -x["score"])[:k]
