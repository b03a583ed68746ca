"""The :class:`HistoryStore` interface every live-history store implements (:mod:`serving.store`: SQLite,
:mod:`serving.redisstore`: Redis), the values it takes and returns (:class:`StoredEvent`, :class:`Appended`,
the ``history_columns`` layout: :func:`columns_of`), and the rows a bundle seeds it with (:func:`seed_rows`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from serving.recommender import Recommender

__all__ = [
    "SEARCH_EVENT",
    "Appended",
    "HistoryStore",
    "StoredEvent",
    "columns_of",
    "history_entry",
    "seed_rows",
]

SEARCH_EVENT = "<search>"  # the event type a stored search gets when the client names none


@dataclass(frozen=True)
class StoredEvent:
    """One interaction as stored (ids external, seconds since the epoch)."""

    item_id: str  # "" for a search
    event: str
    dwell_s: float | None
    ts: float
    query: str | None = None  # a search's text (with or without an item)


def history_entry(item_id: str, query: str | None) -> object:
    """The ``history_columns`` item of a stored event: the item id, or ``{"query": text}`` for a search (the
    history entry :meth:`serving.recommender.Recommender.resolve` reads)."""
    return {"query": query} if query is not None and not item_id else item_id


def columns_of(rows: list[tuple]) -> tuple[tuple, tuple, tuple, tuple]:
    """(item_id, event, dwell_s, ts, query) rows -> the four ``history_columns``; searches as history entries."""
    if not rows:
        return (), (), (), ()
    items = tuple(history_entry(r[0], r[4]) for r in rows)
    return items, *(tuple(r[k] for r in rows) for k in (1, 2, 3))  # type: ignore[return-value]


@dataclass(frozen=True)
class Appended:
    """What one write did: each user's version just before and just after it, and how many of its events
    were older than the ``max_events`` newest their user keeps, so were not kept."""

    versions: dict[str, tuple[int | None, int]]
    trimmed: int = 0


class HistoryStore(Protocol):
    max_events: int
    writable: bool

    def append(self, events: Sequence[tuple[str, StoredEvent]]) -> int: ...
    def append_tracked(self, events: Sequence[tuple[str, StoredEvent]]) -> Appended: ...
    def history(self, user_key: str) -> list[StoredEvent]: ...
    def version(self, user_key: str) -> int | None: ...
    def history_columns(self, user_key: str) -> tuple[tuple, tuple, tuple, tuple]: ...
    def erase(self, user_key: str) -> int: ...
    def erased_since(self, since: float = 0.0) -> list[str]: ...
    def is_erased(self, user_key: str) -> bool: ...
    def seed(self, rows: Iterable[tuple[str, StoredEvent]], source: str) -> int: ...
    def sweep(self, now: float | None = None) -> int: ...
    def probe(self) -> bool: ...
    def record_items(self, changes: Sequence[tuple[str, str, Sequence[str]]]) -> None: ...
    def catalog_changes(self) -> list[tuple[str, str, list[str]]]: ...


def seed_rows(rec: Recommender) -> Iterator[tuple[str, StoredEvent]]:
    """(user_key-less) rows of the bundle's training histories, for :meth:`HistoryStore.seed`."""
    frame = rec.bundle.histories
    dwell = frame["dwell_s"].to_numpy()
    queries = frame["queries"] if "queries" in frame else [()] * len(frame)  # the searches after each event
    for user, item, event, d, ts, texts in zip(
        frame["user_id"].astype(str), frame["item_id"].astype(str), frame["event"].astype(str), dwell,
        frame["ts"].to_numpy(), queries, strict=True,
    ):  # fmt: skip
        yield user, StoredEvent(item, event, None if not (d >= 0) else float(d), float(ts))
        for text in texts if texts is not None else ():
            yield user, StoredEvent("", SEARCH_EVENT, None, float(ts), str(text))
