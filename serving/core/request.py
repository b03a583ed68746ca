"""One typed request for a recommendation: who it is for, how many, and what may be in the list.

The same object travels from the HTTP layer (or an in-process caller) through the real-time loop to the
recommender, so a new knob is added here once instead of to every signature on the way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from serving.core.listsettings import KNOBS, check_knob
from serving.core.texthash import check_query


@dataclass(frozen=True)
class RecommendationRequest:
    """A recommendation request.

    Attributes:
        user_id: a known user: their stored history is read (ignored when ``history`` is given). Neither: the
            popularity fallback.
        history: external item ids the user interacted with, oldest first (used instead of a stored history);
            an entry ``{"query": "text"}`` is a search (read by the model when it reads queries).
        events: event type of each history item (unknown types read as the 'other' bucket). ``events``,
            ``dwell`` and ``ts`` have one value per history entry, searches included (a search's are not read).
        dwell: seconds spent on each history item (None: unknown).
        ts: unix time of each history event (the model reads the gaps between them).
        k: how many items to return (at least 1).
        exclude_seen: leave out items already in the history.
        exclude_items: item ids never to return.
        allow_items: if given, only these item ids may be returned.
        rerank: apply the re-ranks (False: the model's ranking alone: no session-intent lift, and the list
            knobs start off instead of at the recommender's defaults; knobs the request sets still apply).
        diversity, max_per_category, calibrate, explore: the list re-rank's knobs
            (:class:`~serving.core.diversify.ListSettings`; None: the recommender's default, 0: off).
        seed: exploration's seed (None: one derived from the request, so the same request gets the same list).
        explain: add ``because`` to each item: the recent history items it is most similar to.
        context: the current moment's context (e.g. ``{"device": "mobile"}``), for a model that reads context:
            it applies to the history's events that carry none; an unknown key is refused, an unknown value
            reads as unknown (:mod:`serving.core.signals`).
        features: the user's static features (e.g. ``{"gender": "F"}``), for a model that reads them; they
            replace a stored user's, and alone (no history) give a personal start instead of the popularity
            fallback.
    """

    user_id: str | None = None
    history: Sequence[str] | None = None
    events: Sequence[str] | None = None
    dwell: Sequence[float | None] | None = None
    ts: Sequence[float] | None = None
    k: int = 10
    exclude_seen: bool = True
    exclude_items: Collection[str] = ()
    allow_items: Collection[str] | None = None
    rerank: bool = True
    diversity: float | None = None
    max_per_category: int | None = None
    calibrate: float | None = None
    explore: float | None = None
    seed: int | None = None
    explain: bool = False
    context: Mapping[str, str] | None = None
    features: Mapping[str, str] | None = None

    @classmethod
    def of(cls, request: RecommendationRequest | None = None, /, **fields) -> RecommendationRequest:
        """The request a caller means: ``request`` with ``fields`` replaced, or one built from ``fields``."""
        if request is None:
            return cls(**fields)
        return replace(request, **fields) if fields else request

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int):
            raise TypeError(f"k must be an integer, got {type(self.k).__name__}")
        if self.k < 1:
            raise ValueError("k must be at least 1")
        for name in KNOBS:
            if getattr(self, name) is not None:
                check_knob(name, getattr(self, name))  # a ValueError naming the knob that is out of range
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("context", "features"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a mapping of names to values, got {type(value).__name__}")
        if self.history is None:
            given = [n for n in ("events", "dwell", "ts") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} given without a history")
            return
        for i, entry in enumerate(self.history):
            if type(entry) is not str and isinstance(entry, Mapping):  # str first: the common, fast case
                if set(entry) != {"query"}:
                    raise ValueError(f"history[{i}]: a search is {{'query': text}}, got keys {sorted(entry)}")
                check_query(entry["query"], f"history[{i}].query")  # a QueryError (ValueError) naming it
        n = len(self.history)
        for name in ("events", "dwell", "ts"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} items")
