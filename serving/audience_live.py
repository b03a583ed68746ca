"""Audiences over the live history store (``POST /audiences``): a user index kept fresh, and every user it
returns checked against the store. No torch.

The index (:class:`serving.audience.UserIndex`) is built from every user the store holds, their current
histories (live events included), and reused across requests. It is rebuilt:

- at once, when the recommender changed (a reload: vectors of another model) or there is none yet;
- in the background, when it is older than ``refresh_s`` and the store has been written since (its write
  clock moved); requests keep using the previous one meanwhile.

Between rebuilds each answer is checked against the store before it leaves: the candidates' current versions
are read in one query; a user the store no longer holds (erased, or expired by retention) is dropped, so an
erased user never appears; a user whose history changed since the build is re-encoded from their current
history and re-scored (and dropped if they have now seen the item). Users who were not candidates at build time
enter the ranking at the next rebuild. A user is encoded as ``/recommend`` encodes them: their stored searches
included, and without the bundle's stored profile once the erasure log names them. A store that cannot be read
raises StoreUnavailable (a 503). The store holds keyed ids when pseudonymisation is on, and those are
what an audience names: raw ids never enter this module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

import numpy as np

from serving.audience import Audience, ItemQuery, UserIndex
from serving.batch import BatchScorer
from serving.core.results import ResolvedHistory
from serving.historystore import columns_of
from serving.live import LiveService
from serving.privacy import erasure_key
from serving.recommender import Recommender

log = logging.getLogger(__name__)
_CHUNK = 500  # keys per SQL IN (...) list: under SQLite's variable limit


class LiveAudiences:
    """The service's audience index: built on first use, rebuilt when stale (see the module docstring)."""

    def __init__(self, refresh_s: float = 60.0) -> None:
        self.refresh_s = refresh_s
        self._index: UserIndex | None = None
        self._keyed = KeyedFeatures()  # kept across rebuilds: keyed once per bundle
        self._lock = threading.Lock()  # one build at a time
        self._rebuilding = False

    def index(self, live: LiveService) -> UserIndex:
        """An index for the recommender now serving; a stale one triggers a background rebuild."""
        index, rec = self._index, live.recommender
        if index is None or index.rec is not rec:
            with self._lock:
                index = self._index
                if index is None or index.rec is not live.recommender:
                    index = self._index = build_from_store(live, self._keyed)
            return index
        if index.age_s > self.refresh_s and not self._rebuilding and store_clock(live.store) != index.clock:
            self._rebuilding = True
            threading.Thread(target=self._rebuild, args=(live,), name="audience-index", daemon=True).start()
        return index

    def _rebuild(self, live: LiveService) -> None:
        try:
            with self._lock:
                self._index = build_from_store(live, self._keyed)
        except Exception:  # noqa: BLE001 - the previous index keeps serving; the next request retries
            log.exception("audience index rebuild failed")
        finally:
            self._rebuilding = False

    def audiences(
        self, live: LiveService, item_ids: Sequence[str], k: int, exclude_seen: bool = True
    ) -> tuple[UserIndex, list[Audience]]:
        """Each item's top-``k`` stored users now (see the module docstring); raises UnknownItems, and
        StoreUnavailable when the store cannot be read (a 503, as every other store read)."""
        with reading(live.store):
            index = self.index(live)
            return index, [checked_audience(live, index, q, k, exclude_seen) for q in index.queries(item_ids)]


def checked_audience(
    live: LiveService, index: UserIndex, query: ItemQuery, k: int, exclude_seen: bool
) -> Audience:
    """The item's top-``k`` from the index, each candidate checked against the store's current state."""
    fetch = k + max(16, k // 4)  # a margin for users dropped by the check
    while True:
        scores, found = index.search(query, fetch, exclude_seen)
        kept_scores, kept_users = _check(live, index, query, scores, found, exclude_seen)
        exhausted = len(found) < fetch  # every user of the index was a candidate
        if len(kept_users) >= k or exhausted:
            order = np.argsort(-kept_scores, kind="stable")[:k]
            return Audience(
                query.item_id, [kept_users[i] for i in order], kept_scores[order].astype(np.float32)
            )
        fetch *= 2


def _check(
    live: LiveService, index: UserIndex, query: ItemQuery, scores: np.ndarray, found: np.ndarray,
    exclude_seen: bool,
) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Drop users the store no longer holds; re-score those whose history changed since the build."""
    users = [index.user_ids[p] for p in found]
    now = store_versions(live.store, users)
    built = index.versions or [None] * len(index)
    keep_scores, keep_users, changed = [], [], []
    for score, position, user in zip(scores.tolist(), found.tolist(), users, strict=True):
        version = now.get(user)
        if version is None:
            continue  # erased or expired: never shown
        if index.versions is not None and version != built[position]:
            changed.append(user)
            continue
        keep_scores.append(score)
        keep_users.append(user)
    if changed:
        rec = index.rec
        histories = [_resolve(live, rec, user) for user in changed]
        fresh = [(u, h) for u, h in zip(changed, histories, strict=True)
                 if len(h.history) and not (exclude_seen and _has_seen(h, query, rec))]  # fmt: skip
        if fresh:
            feats = _profiles(live, index.features, [u for u, _ in fresh])
            vectors = BatchScorer(rec).encode([h.history for _, h in fresh], features=feats)  # (C, D)
            keep_scores += (vectors @ query.vector).tolist()
            keep_users += [u for u, _ in fresh]
    return np.asarray(keep_scores, np.float32), keep_users


def _profiles(live: LiveService, table: Mapping[str, np.ndarray] | None, users: list[str]) -> list | None:
    """Each re-encoded user's features from the index's table; a user erased since the build (and back
    since) gets none, as ``/recommend`` answers them. None: the model reads no features."""
    if not table:
        return None
    return [table[u] if u in table and not live.store.is_erased(u) else None for u in users]


def _has_seen(history: ResolvedHistory, query: ItemQuery, rec: Recommender) -> bool:
    row = rec.catalog.row_of.get(query.item_id)
    return (
        bool((history.history.rows == row).any()) if row is not None else query.item_id in history.live_seen
    )


def _resolve(live: LiveService, rec: Recommender, user_key: str) -> ResolvedHistory:
    return rec.resolve(*live.store.history_columns(user_key))


# ---- what the store holds (SQLite and Redis read in bulk; any other store through its interface) --------
def build_from_store(live: LiveService, keyed: KeyedFeatures | None = None) -> UserIndex:
    """Every stored user's current history, encoded and indexed (versions read before histories: a racing
    write can only make a history newer than its recorded version, which the check then re-scores).
    ``keyed``: a feature table kept from earlier builds (default: keyed anew)."""
    store, rec = live.store, live.recommender
    with reading(store):
        clock = store_clock(store)
        versions = all_versions(store)
        users = sorted(versions)
        columns = _bulk_columns(store, set(users))
        histories = [rec.resolve(*columns[u]) if u in columns else _resolve(live, rec, u) for u in users]
        features = (keyed or KeyedFeatures()).table(live, rec, store)  # the erasure log read after histories
    return UserIndex.build(rec, users, histories, versions=[versions[u] for u in users], clock=clock,
                           features=features)  # fmt: skip


class KeyedFeatures:
    """The bundle's user features by store key (keyed ids when pseudonymisation is on, as the store names
    users), for a model that reads them; empty otherwise. Made once per recommender: under
    pseudonymisation that is one HMAC a user, which rebuilds of the index for the same bundle skip.

    Users the store's erasure log names are left out: the bundle's users table predates their erasure, so a
    user erased and back since is encoded without that profile, as ``/recommend`` answers them."""

    def __init__(self) -> None:
        self._rec: Recommender | None = None
        self._table: dict[str, np.ndarray] = {}
        self._by_erasure: dict[str, str] | None = None  # erasure_key(store key) -> store key, made on need

    def table(self, live: LiveService, rec: Recommender, store=None) -> Mapping[str, np.ndarray]:
        """The table for ``rec``, less the users ``store``'s erasure log names (the same object while it
        names none of them)."""
        if self._rec is not rec:
            features = rec.user_features
            self._table = {live.user_key(u): f for u, f in features.items()} if features else {}
            self._rec, self._by_erasure = rec, None
        if store is None or not self._table:
            return self._table
        erased = store.erased_since(0.0)
        if not erased:
            return self._table
        if self._by_erasure is None:  # one SHA-256 a user, once per bundle, and only once anyone was erased
            self._by_erasure = {erasure_key(u): u for u in self._table}
        gone = {self._by_erasure[e] for e in erased if e in self._by_erasure}
        return {u: f for u, f in self._table.items() if u not in gone} if gone else self._table


def reading(store) -> AbstractContextManager:
    """The store's read guard: an unreachable Redis or a SQLite file that cannot be read raises
    StoreUnavailable ("read"), which the service answers with a 503 (any other store: no guard)."""
    guard = getattr(store, "reading", None)  # SQLite and Redis stores have one
    return guard() if guard is not None else contextlib.nullcontext()


def store_clock(store) -> int | None:
    """The store's write clock (moves on every write), or None when the store does not expose one."""
    if hasattr(store, "db"):  # SQLite
        row = store.db.execute("SELECT value FROM meta WHERE key = 'clock'").fetchone()
        return int(row[0]) if row else None
    if hasattr(store, "r"):  # Redis
        value = store.r.get(store._k("clock"))
        return int(value) if value is not None else 0
    return None


def all_versions(store) -> dict[str, int]:
    """Every stored user key -> its version."""
    if hasattr(store, "db"):
        return dict(store.db.execute("SELECT user_key, version FROM users").fetchall())
    if hasattr(store, "r"):
        users = store.r.zrange(store._k("oldest"), 0, -1)
        return {u: v for u, v in store_versions(store, users).items() if v is not None}
    raise TypeError(f"{type(store).__name__}: cannot list its users for an audience")


def store_versions(store, users: Sequence[str]) -> dict[str, int | None]:
    """The current version of each of ``users`` (None: not stored)."""
    out: dict[str, int | None] = dict.fromkeys(users)
    if hasattr(store, "db"):
        for start in range(0, len(users), _CHUNK):
            part = list(users[start : start + _CHUNK])
            marks = ",".join("?" * len(part))
            out.update(
                store.db.execute(f"SELECT user_key, version FROM users WHERE user_key IN ({marks})", part)
            )
    elif hasattr(store, "r"):
        pipe = store.r.pipeline(transaction=False)
        for user in users:
            pipe.get(store._k("v:" + user))
        out.update({u: None if v is None else int(v) for u, v in zip(users, pipe.execute(), strict=True)})
    else:
        out.update({u: store.version(u) for u in users})
    return out


def _bulk_columns(store, users: set[str]) -> dict[str, tuple[tuple, tuple, tuple, tuple]]:
    """SQLite: every user's ``history_columns`` in one scan, searches included (rows mapped by the store's
    own :func:`~serving.historystore.columns_of`); other stores: none (read per user)."""
    if not hasattr(store, "db"):
        return {}
    retention = getattr(store, "retention_s", None)
    cutoff = time.time() - retention if retention else -math.inf
    rows = store.db.execute(
        "SELECT user_key, item_id, event, dwell_s, ts, query FROM events WHERE stored_at >= ? "
        "ORDER BY user_key, ts, seq",
        (cutoff,),
    )
    grouped: dict[str, list[tuple]] = {}
    for user, *event in rows:  # event: (item_id, event, dwell_s, ts, query), as the store's _rows
        if user in users:
            grouped.setdefault(user, []).append(tuple(event))
    return {u: columns_of(events) for u, events in grouped.items()}
