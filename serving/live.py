"""The real-time loop: events in, the next answer adapts; durable histories, erasure, hot reload.

:class:`LiveService` puts a :class:`~serving.historystore.HistoryStore` in front of a
:class:`~serving.recommender.Recommender`. A recommendation for a ``user_id`` encodes the user's *current*
stored history on every call (a per-process cache is keyed by the store's version marker, so a write from
any process or thread is seen by the next read). The recommender can be swapped for a new bundle while
requests run; the store, and so every history, stays.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.catalog_replay import Replayed, apply_catalog_changes, restored_categories
from serving.core.request import RecommendationRequest
from serving.core.results import Recommendation, ResolvedHistory
from serving.core.texthash import QueryError, check_query
from serving.historystore import SEARCH_EVENT, HistoryStore, StoredEvent
from serving.privacy import has_lone_surrogate, key_scheme, user_key
from serving.recommender import Recommender

log = logging.getLogger(__name__)

OTHER_EVENT = "<other>"  # the bucket for event types the model has no embedding of


@dataclass(frozen=True)
class EventLimits:
    max_dwell_s: float = 86_400.0  # a day: longer is a client bug, not a visit
    max_future_s: float = 300.0  # clock skew allowed for client timestamps
    max_past_s: float = 10 * 365 * 86_400.0  # older than this is refused as a unit mistake (ms vs s)


@dataclass
class EventError:
    index: int
    field: str
    message: str

    def as_dict(self) -> dict:
        return {"index": self.index, "field": self.field, "msg": self.message}


@dataclass(frozen=True)
class Ingested:
    """What a write of events did: ``accepted`` events are stored; ``trimmed`` ones were valid but older than
    the newest ``max_events`` their user keeps, so they are not (the store keeps a window, not a log)."""

    accepted: int
    trimmed: int = 0


class EventsRejected(ValueError):
    """Some events of a batch are invalid; none of the batch was stored."""

    def __init__(self, errors: list[EventError]) -> None:
        super().__init__("; ".join(f"event {e.index}: {e.field}: {e.message}" for e in errors[:5]))
        self.errors = errors


class LiveService:
    def __init__(
        self,
        recommender: Recommender,
        store: HistoryStore,
        pseudonym_key: str | bytes | None = None,
        limits: EventLimits | None = None,
        cache_size: int = 100_000,
    ) -> None:
        self._recommender = recommender
        self.store = store
        if isinstance(pseudonym_key, str):
            pseudonym_key = pseudonym_key.encode()
        self._key = pseudonym_key or None
        self.key_scheme = key_scheme(self._key)
        self.limits = limits or EventLimits()
        # user key -> (store version, resolved history, the recommender whose catalog it was resolved against)
        self._cache: OrderedDict[str, tuple[int, ResolvedHistory, Recommender]] = OrderedDict()
        self._cache_size = cache_size
        self._erased_seen: OrderedDict[str, tuple[int, bool]] = OrderedDict()  # key -> (version, erased)
        self._reload_lock = threading.Lock()
        self.replayed = Replayed()  # what the last reload's replay of catalog changes did (skipped items)

    # ---- the recommender (swappable) ----------------------------------------------------------------
    @property
    def recommender(self) -> Recommender:
        return self._recommender

    def reload(self, bundle_dir: str | Path, **load_kwargs) -> Recommender:
        """Load a new bundle beside the old one, replay live catalog changes, then swap it in atomically.

        Requests in flight finish on the recommender they started with; none fails. Histories stay.
        """
        with self._reload_lock:
            fresh = Recommender.load(bundle_dir, **load_kwargs)
            self.replayed = apply_catalog_changes(fresh, self.store)
            self._recommender = fresh  # one reference assignment: atomic for every reader
            self._cache.clear()  # resolved histories hold rows of the old catalog
        log.info("reloaded bundle %s (%s)", bundle_dir, fresh.model_version)
        return fresh

    # ---- users ----------------------------------------------------------------------------------------
    def user_key(self, user_id: str) -> str:
        """How a user id is stored: a keyed hash (HMAC-SHA256) when pseudonymisation is on, else as given
        (ValueError naming ``user_id`` for an id that is not valid UTF-8)."""
        return user_key(self._key, user_id)

    @property
    def writable(self) -> bool:
        """False from a write the store refused (read-only, full) until a write succeeds: not ready."""
        return getattr(self.store, "writable", True)

    def probe_writable(self) -> bool:
        """A one-row write when the store is marked unwritable, so it recovers without client writes (a
        disk write: call it off the event loop)."""
        return self.writable or self.store.probe()

    def validate(self, events: Sequence[dict], now: float | None = None) -> list[tuple[str, StoredEvent]]:
        """Check every event; raises :class:`EventsRejected` listing each bad one (the batch is all or none)."""
        rec, limits = self._recommender, self.limits
        now = time.time() if now is None else now
        vocabulary = set(rec.event_of) | {OTHER_EVENT, "other"}  # "other" is the bucket's plain name
        errors, out = [], []
        for i, raw in enumerate(events):
            query = raw.get("query")
            if raw.get("item_id") is None and query is None:
                errors.append(EventError(i, "item_id", "an item id (or, for a search, a query) is needed"))
                continue
            if raw.get("item_id") is not None and query is not None:  # the model would read only the item
                errors.append(EventError(i, "query", "give either item_id or query (a search), not both; "
                                                     "send a search as its own event"))  # fmt: skip
                continue
            if query is not None:
                try:
                    check_query(query, "query")
                except QueryError as exc:
                    errors.append(EventError(i, "query", str(exc).split(": ", 1)[-1]))
                    continue
            search = raw.get("item_id") is None
            user, item, kind = raw.get("user_id"), "" if search else str(raw["item_id"]), raw.get("event")
            kind = (SEARCH_EVENT if search else OTHER_EVENT) if kind is None else str(kind)
            dwell, ts = raw.get("dwell_s"), raw.get("ts")
            bad_text = [name for name, text in (("user_id", user), ("item_id", item), ("event", kind))
                        if text is not None and has_lone_surrogate(str(text))]  # fmt: skip
            errors += [EventError(i, name, "holds a lone surrogate (not valid UTF-8)") for name in bad_text]
            if user is None or str(user) == "":
                errors.append(EventError(i, "user_id", "a user id is needed"))
            if not search and "item_id" not in bad_text and not rec.catalog.knows(item):
                errors.append(EventError(i, "item_id", f"unknown item {item!r}"))
            if kind == "":
                errors.append(EventError(i, "event", "empty; leave it out (or null) for '<other>'"))
            elif "event" not in bad_text and kind not in vocabulary and not (search and kind == SEARCH_EVENT):
                errors.append(
                    EventError(i, "event", f"unknown event type {kind!r}; known: {sorted(vocabulary)}")
                )
            if dwell is not None and not (math.isfinite(dwell) and 0 <= dwell <= limits.max_dwell_s):
                errors.append(
                    EventError(i, "dwell_s", f"{dwell} is not in [0, {limits.max_dwell_s:g}] seconds")
                )
            if ts is not None and not math.isfinite(ts):
                errors.append(EventError(i, "ts", f"{ts} is not a finite number of seconds"))
            elif ts is not None and ts > now + limits.max_future_s:
                errors.append(EventError(i, "ts", f"{ts} is {ts - now:.0f} s in the future"))
            elif ts is not None and ts < now - limits.max_past_s:
                errors.append(EventError(i, "ts", f"{ts} is more than {limits.max_past_s:g} s in the past"))
            if not errors:
                out.append(
                    (self.user_key(user), StoredEvent(item, kind, dwell, now if ts is None else ts, query))
                )
        if errors:
            raise EventsRejected(errors)
        return out

    def ingest(self, events: Sequence[dict]) -> int:
        """Validate, then store durably; returns how many were stored (after the commit)."""
        return self.ingest_report(events).accepted

    def ingest_report(self, events: Sequence[dict]) -> Ingested:
        """:meth:`ingest`, also saying how many valid events were too old for their user's window.

        Raises :class:`EventsRejected` or :class:`~serving.store.StoreUnavailable` (the disk refused the
        write), storing nothing. A cached history that was current just before this write is extended in
        place (what a re-read would give), so the next recommendation does not re-read the store."""
        validated = self.validate(events)
        appended = self.store.append_tracked(validated)
        versions = appended.versions
        by_user: dict[str, list] = {}
        for key, event in validated:
            by_user.setdefault(key, []).append(event)
        rec = self._recommender
        for key, (before, after) in versions.items():
            cached, new = self._cache.get(key), by_user[key]
            extended = None
            times = [e.ts for e in new]
            searches = any(e.query is not None for e in new)  # read at the item before them: re-read instead
            if (
                cached is not None
                and cached[0] == before
                and cached[2] is rec
                and times == sorted(times)
                and not searches
            ):
                old = cached[1]
                if not old.n_events or times[0] >= old.last_ts:
                    more = rec.resolve([e.item_id for e in new], [e.event for e in new],
                                                     [e.dwell_s for e in new], times,
                                                     previous_ts=old.last_ts if old.n_events else None)  # fmt: skip
                    extended = old.extended(more, self.store.max_events)
            if extended is None:
                self._cache.pop(key, None)
            else:
                self._cache[key] = (after, extended, rec)
        return Ingested(len(validated) - appended.trimmed, appended.trimmed)

    def stored_history(self, user_id: str) -> ResolvedHistory | None:
        """The user's current history from the store (None if nothing is stored)."""
        return self._stored(self.user_key(user_id))[1]

    def _stored(self, key: str) -> tuple[int | None, ResolvedHistory | None]:
        """(store version, current history) of a stored key; (None, None) when nothing is stored."""
        version = self.store.version(key)  # read before the history: a racing write can only make it newer
        if version is None:
            self._cache.pop(key, None)
            return None, None
        rec = self._recommender
        cached = self._cache.get(key)
        if cached is not None and cached[0] == version and cached[2] is rec:
            return version, cached[1]
        items, events, dwell, ts = self.store.history_columns(key)
        resolved = rec.resolve(items, events, dwell, ts)
        # Cached only when no write landed between the two version reads: versions are never reused and a
        # write changes rows and version in one transaction, so the rows are then exactly those of `version`.
        # Otherwise an ingest could extend rows that already hold its events (they would count twice).
        if self.store.version(key) == version:
            current = self._cache.get(key)
            if current is None or current[2] is not rec or current[0] <= version:  # never replace a newer one
                self._cache[key] = (version, resolved, rec)
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return version, resolved

    def recommend(self, request: RecommendationRequest | None = None, /, **fields) -> Recommendation:
        """:meth:`Recommender.recommend`, with a ``user_id``'s history read from the store (its current one) and
        their profile from the bundle unless the erasure log names them."""
        request = RecommendationRequest.of(request, **fields)
        rec = self._recommender
        if request.history is not None or request.user_id is None:
            return rec.recommend(request)
        user_id = str(request.user_id)
        key = self.user_key(user_id)
        version, resolved = self._stored(key)
        profile = request.features is None and user_id in rec.user_features
        if profile:  # the bundle predates an erasure: its users table still holds the erased profile
            profile = not self._erased(key, version)
        return rec.recommend_resolved(resolved, request, profile=profile)

    def _erased(self, key: str, version: int | None) -> bool:
        """Whether the erasure log names a stored key, remembered per store version: an erasure anywhere
        changes the version (the user's rows go), and pruning only turns the answer to False, so a remembered
        True errs on the safe side. A user with nothing stored is asked every time."""
        seen = self._erased_seen.get(key)
        if version is not None and seen is not None and seen[0] == version:
            return seen[1]
        erased = self.store.is_erased(key)
        if version is not None:
            self._erased_seen[key] = (version, erased)
            if len(self._erased_seen) > self._cache_size:
                self._erased_seen.popitem(last=False)
        return erased

    def user_events(self, user_id: str) -> list[dict]:
        """What is stored about a user, oldest first."""
        return [e.__dict__.copy() for e in self.store.history(self.user_key(user_id))]

    def erase(self, user_id: str) -> int:
        """Delete a user's stored history, from the store's files too; the next recommendation for them is
        the anonymous fallback. The erasure log keeps a hash of the stored key, never the id."""
        key = self.user_key(user_id)
        count = self.store.erase(key)
        self._cache.pop(key, None)
        return count

    # ---- catalog --------------------------------------------------------------------------------------
    def add_items(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
        """Add items: durable in the store before any answer can hold them; all or nothing (see
        :meth:`Catalog.add_items`). Serialised with reloads, so a new bundle replays every change."""
        with self._reload_lock:  # no other catalog change runs meanwhile: which items are restores holds
            rec = self._recommender
            changes = []
            for item_id, categories in items:
                restored = restored_categories(rec, str(item_id))  # a restore records the bundle's categories
                changes.append((str(item_id), "add", list(categories) if restored is None else restored))
            return rec.catalog.add_items(items, persist=lambda: self.store.record_items(changes))

    def remove_items(self, item_ids: Sequence[str]) -> list[str]:
        """Take items out of every answer: durable first, then visible; all or nothing."""
        changes = [(str(item_id), "remove", []) for item_id in item_ids]
        with self._reload_lock:
            return self._recommender.catalog.remove_items(
                item_ids, persist=lambda: self.store.record_items(changes)
            )
