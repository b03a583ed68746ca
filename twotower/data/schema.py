"""The in-memory form of an interaction log: raw string ids in, dense indices out."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# Canonical column names inside the library, whatever the source file called them.
USER, ITEM, TIME, EVENT, DWELL = "user", "item", "ts", "event", "dwell_s"
CATEGORIES, TITLE = "categories", "title"
QUERY = "query"  # a search event's text; a row with a query may have no item
CONTEXT_PREFIX = "context:"  # canonical name of a per-event context column: "context:<name>"
UNKNOWN_VALUE = "<unknown>"  # index 0 of every context / user-feature vocabulary: missing or unseen values


class DataError(ValueError):
    """A data file cannot be used as given; the message names file, column and row."""


@dataclass
class LoadReport:
    """What validation dropped or changed, so nothing is lost silently."""

    rows_read: int = 0
    duplicates_dropped: int = 0
    short_users_dropped: int = 0
    short_user_events_dropped: int = 0
    unknown_item_features: int = 0
    searches: int = 0  # search rows (a query, no item) read
    searches_before_first_item: int = 0  # dropped: no item event precedes them, so no position reads them
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RawLog:
    """Events with canonical columns (ids as strings) and an optional item table.

    ``events`` columns: user, item, ts (float seconds or file order), and optionally event, dwell_s.
    ``items`` columns: item, categories (list[str]) and optionally title.
    """

    events: pd.DataFrame
    items: pd.DataFrame | None = None
    name: str = "log"
    report: LoadReport = field(default_factory=LoadReport)
    has_time: bool = True  # False: ``ts`` is the file order
    users: pd.DataFrame | None = None  # static user features: column ``user`` + one string column per feature

    @property
    def context_cols(self) -> list[str]:
        """Per-event context columns, by their own names (canonical ``context:<name>`` in ``events``)."""
        return [c[len(CONTEXT_PREFIX) :] for c in self.events.columns if str(c).startswith(CONTEXT_PREFIX)]

    @property
    def has_events(self) -> bool:
        return EVENT in self.events.columns

    @property
    def has_dwell(self) -> bool:
        return DWELL in self.events.columns


@dataclass
class EncodedLog:
    """A validated log as dense arrays, sorted by (user, time, file order).

    Index 0 is reserved for padding in items, events and categories; real items are 1..n_items.
    ``user_offsets[u]:user_offsets[u + 1]`` are user ``u``'s events.
    """

    name: str
    user_ids: list[str]  # index u -> external id
    item_ids: list[str]  # index i - 1 -> external id (item index 0 is padding)
    event_names: list[str]  # index e -> event name; 0 is "other"/missing
    category_names: list[str]  # index c -> name; 0 is padding
    users: np.ndarray  # (E,) int64
    items: np.ndarray  # (E,) int64 in 1..n_items
    ts: np.ndarray  # (E,) float64 seconds (or file order when the log has no time)
    events: np.ndarray  # (E,) int64 in 0..n_events-1
    dwell: np.ndarray  # (E,) float32 seconds, -1 where unknown
    user_offsets: np.ndarray  # (U + 1,) int64
    item_categories: np.ndarray  # (n_items + 1, C) int64, 0-padded
    item_titles: list[str] | None = None
    has_time: bool = True
    report: LoadReport = field(default_factory=LoadReport)
    # Optional signals (None: the log has none). Vocabulary index 0 is UNKNOWN_VALUE.
    queries: np.ndarray | None = (
        None  # (E, T) int64 hashed tokens of the searches after event e, before e + 1
    )
    query_hashing: dict | None = None  # serving.core.texthash.QueryHashing.as_dict() used for ``queries``
    query_texts: list[list[str]] | None = None  # (E,) the search texts each position reads (for serving)
    context: np.ndarray | None = None  # (E, K) int64 per-event context indices
    context_vocab: dict[str, list[str]] | None = None  # column -> values (index 0 = unknown), in K order
    user_features: np.ndarray | None = None  # (U, F) int64 static feature indices
    user_feature_vocab: dict[str, list[str]] | None = (
        None  # feature -> values (index 0 = unknown), in F order
    )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_events(self) -> int:
        return len(self.event_names)

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    @property
    def n_interactions(self) -> int:
        return int(len(self.items))

    def user_slice(self, u: int) -> slice:
        return slice(int(self.user_offsets[u]), int(self.user_offsets[u + 1]))

    def summary(self) -> dict:
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
        }


def as_str_ids(values: pd.Series) -> pd.Series:
    """External ids as strings; integral floats (pandas upcasts ids with NaN) lose their '.0'."""
    if pd.api.types.is_float_dtype(values):
        finite = values.dropna()
        if len(finite) and np.all(np.mod(finite.to_numpy(), 1) == 0):
            return values.map(lambda v: str(int(v)) if pd.notna(v) else v)
    return values.astype("string").astype(object)
