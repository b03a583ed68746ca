"""A Redis-backed :class:`~serving.historystore.HistoryStore`: several replicas on several hosts share one
set of live histories (``TWOTOWER_STORE=redis://host:port/db``). Same semantics as the SQLite store. The
connection, its errors, the persistence check and AOF rewrites: :mod:`serving.redisdb`.

Layout (every key under ``prefix``): ``e:<user>`` a sorted set of the user's events (score ``ts``, member a
16-hex-digit arrival number + JSON ``[item, event, dwell, stored_at]``, so ties in ``ts`` keep arrival order);
``v:<user>`` the user's version (the value of the store-wide write clock at their last change, never reused);
``oldest`` users by a lower bound of their oldest ``stored_at`` (what the retention sweep visits); ``erasures``
the erasure log (hashes of stored keys); ``items`` live catalog changes; ``keys`` the key scheme; ``seeded``.
A write is one Lua script or one ``MULTI``/``EXEC`` block: all or nothing for readers and in the AOF.

Durability is Redis's: an event is acknowledged after the script returned, so with ``appendonly yes`` and
``appendfsync always`` it is on disk then (docs/realtime.md, "Redis"). One Redis (with replicas for reads
or failover), not Redis Cluster: a batch for several users is one script over keys in several slots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence

from redis import exceptions as rex

from serving.historystore import Appended, StoredEvent, columns_of
from serving.privacy import RAW_SCHEME, erasure_key
from serving.redisdb import RedisDatabase
from serving.redislua import APPEND, SWEEP
from serving.sqlitedb import StoreUnavailable

log = logging.getLogger(__name__)

SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_url(value: str) -> bool:
    return value.startswith(SCHEMES)


def open_store(settings, max_events: int, retention_s: float | None = None, **sqlite_kwargs):
    """The store the settings select: ``TWOTOWER_STORE=redis://...`` a :class:`RedisHistoryStore`; empty (the
    default) the embedded SQLite store in the state dir. Anything else is refused, naming the variable."""
    from serving.store import SQLiteHistoryStore

    url = (getattr(settings, "store", "") or os.environ.get("TWOTOWER_STORE", "")).strip()
    if not url or url.lower() == "sqlite":
        return SQLiteHistoryStore(settings.state_dir, max_events, retention_s, **sqlite_kwargs)
    if not is_redis_url(url):
        raise ValueError(
            f"TWOTOWER_STORE={url!r}: expected empty (SQLite in the state dir) or redis://host:port/db"
        )
    return RedisHistoryStore(url, max_events, retention_s)


class RedisHistoryStore(RedisDatabase):
    """:class:`~serving.historystore.HistoryStore` on one Redis database; thread-safe (a connection pool)."""

    def __init__(
        self,
        url: str,
        max_events: int,
        retention_s: float | None = None,
        prefix: str = "twotower:",
        timeout_s: float = 10.0,
        rewrite_on_erase: bool = True,
    ) -> None:
        super().__init__(url, prefix, timeout_s)
        self.max_events = int(max_events)
        self.retention_s = retention_s if retention_s and retention_s > 0 else None
        self.rewrite_on_erase = rewrite_on_erase
        self._append = self.r.register_script(APPEND)
        self._sweep = self.r.register_script(SWEEP)
        with self._guard("opened"):
            self.key_scheme = self.r.get(self._k("keys"))

    # ---- histories ----------------------------------------------------------------------------------
    def append(self, events: Sequence[tuple[str, StoredEvent]]) -> int:
        """Store ``(user_key, event)`` pairs in one script (all or nothing); returns how many were kept."""
        return len(events) - self.append_tracked(events).trimmed

    def append_tracked(self, events: Sequence[tuple[str, StoredEvent]]) -> Appended:
        now = repr(time.time())
        by_user: dict[str, list[StoredEvent]] = {}
        for user, event in events:
            by_user.setdefault(user, []).append(event)
        # a batch id: redis-py retries a command whose reply was lost, and the script stores a batch once
        keys = [
            self._k("clock"),
            self._k("seq"),
            self._k("oldest"),
            self._k("batch:" + secrets.token_hex(16)),
        ]
        args: list = [self.max_events, math.ceil(self.retention_s or 0), now, len(events)]
        for user, evs in by_user.items():
            keys += [self._k("e:" + user), self._k("v:" + user)]
            args += [user, len(evs)]
            for e in evs:
                args += [repr(float(e.ts)), json.dumps(_member(e, float(now)))]
        if not by_user:
            return Appended({}, 0)
        with self._guard(write=True):
            clock, trimmed, before = self._append(keys=keys, args=args)
        versions = {u: (int(b) if b else None, int(clock)) for u, b in zip(by_user, before, strict=True)}
        return Appended(versions, trimmed=int(trimmed))

    def _rows(self, user_key: str) -> list[tuple]:
        with self._guard("read"):
            members = self.r.zrange(self._k("e:" + user_key), 0, -1, withscores=True)
        cutoff = time.time() - self.retention_s if self.retention_s else -math.inf
        rows = []
        for member, ts in members:
            item, event, dwell, stored_at, *query = json.loads(member[16:])  # a search has a 5th field
            if stored_at >= cutoff:
                rows.append((item, event, dwell, ts, query[0] if query else None))
        return rows

    def history(self, user_key: str) -> list[StoredEvent]:
        """The user's stored events, oldest first (by time, then arrival)."""
        return [StoredEvent(*row) for row in self._rows(user_key)]

    def history_columns(self, user_key: str) -> tuple[tuple, tuple, tuple, tuple]:
        return columns_of(self._rows(user_key))

    def version(self, user_key: str) -> int | None:
        """A marker that changes whenever the user's history does (the write clock; never reused)."""
        with self._guard("read"):
            value = self.r.get(self._k("v:" + user_key))
        return None if value is None else int(value)

    def erase(self, user_key: str) -> int:
        """Delete everything stored about a user, expired or not, in one transaction; the erasure is logged
        as a hash of the stored key. The AOF is then rewritten so the user's old commands leave the files."""
        with self._guard(write=True):
            pipe = self.r.pipeline(transaction=True)
            pipe.zcard(self._k("e:" + user_key))
            pipe.delete(self._k("e:" + user_key), self._k("v:" + user_key))
            pipe.zrem(self._k("oldest"), user_key)
            pipe.zadd(self._k("erasures"), {erasure_key(user_key): time.time()})
            count = pipe.execute()[0]
        if self.rewrite_on_erase:
            self.rewrite_files()
        return int(count)

    def erased_since(self, since: float = 0.0) -> list[str]:
        """Erased users (hashes of their stored keys) since ``since``, for the retraining pipeline."""
        with self._guard("read"):
            return list(self.r.zrangebyscore(self._k("erasures"), since, "+inf"))

    def is_erased(self, user_key: str) -> bool:
        """Whether the erasure log (pruned by retention) names this user (see the SQLite store)."""
        with self._guard("read"):
            return self.r.zscore(self._k("erasures"), erasure_key(user_key)) is not None

    def seed(self, rows: Iterable[tuple[str, StoredEvent]], source: str) -> int:
        """Load initial histories once per store (a later call, from any replica, is a no-op)."""
        by_user: dict[str, list[StoredEvent]] = {}
        for user, event in rows:
            by_user.setdefault(user, []).append(event)
        total = sum(len(v) for v in by_user.values())
        now = time.time()
        with self._guard(write=True), self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._k("seeded"))
                if pipe.get(self._k("seeded")) is not None:
                    return 0
                seq = pipe.incrby(self._k("seq"), total) - total
                clock = pipe.incr(self._k("clock"))
                pipe.multi()
                for user, evs in by_user.items():
                    members = {}
                    for e in evs:
                        seq += 1
                        members[f"{seq:016x}" + json.dumps(_member(e, now))] = e.ts
                    pipe.zadd(self._k("e:" + user), members)
                    pipe.zremrangebyrank(self._k("e:" + user), 0, -(self.max_events + 1))
                    pipe.set(self._k("v:" + user), clock)
                    pipe.zadd(self._k("oldest"), {user: now}, nx=True)
                    if self.retention_s:
                        pipe.expire(self._k("e:" + user), math.ceil(self.retention_s))
                        pipe.expire(self._k("v:" + user), math.ceil(self.retention_s))
                pipe.set(self._k("seeded"), source)
                pipe.execute()
            except rex.WatchError:
                return 0  # another replica seeded it meanwhile
        return total

    def sweep(self, now: float | None = None) -> int:
        """Delete events stored, and erasure records logged, longer ago than the retention window; returns
        how many events. Users who lost events get a new version, so no cache keeps serving them."""
        if not self.retention_s:
            return 0
        cutoff = (now or time.time()) - self.retention_s
        removed, batch = 0, 500
        with self._guard(write=True):
            while True:
                visited, gone = self._sweep(keys=[self._k("oldest"), self._k("clock")],
                                            args=[repr(cutoff), self.prefix, batch])  # fmt: skip
                removed += int(gone)
                if int(visited) < batch:
                    break
            self.r.zremrangebyscore(self._k("erasures"), "-inf", f"({cutoff!r}")
        return removed

    def counts(self) -> dict[str, int]:
        with self._guard("read"):
            users = self.r.zrange(self._k("oldest"), 0, -1)
            pipe = self.r.pipeline(transaction=False)
            for user in users:
                pipe.zcard(self._k("e:" + user))
            sizes = pipe.execute()
        return {"events": sum(sizes), "users": sum(1 for s in sizes if s)}

    def probe(self) -> bool:
        """Whether the store takes writes now (a one-key write)."""
        with contextlib.suppress(StoreUnavailable), self._guard(write=True):
            self.r.set(self._k("probed_at"), repr(time.time()))
        return self.writable

    def close(self) -> None:
        self.r.close()

    # ---- how user keys are made ---------------------------------------------------------------------
    def adopt_key_scheme(self, scheme: str, rekey: Callable[[str], str]) -> int:
        """Record how user keys are made. A store of raw ids is re-keyed with ``rekey`` once, in one
        transaction, when pseudonymisation is turned on; any other change is refused."""
        with self._guard(write=True), self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._k("keys"), self._k("clock"))
                    recorded = pipe.get(self._k("keys"))
                    users = pipe.zrange(self._k("oldest"), 0, -1)
                    if recorded is None and users:
                        recorded = RAW_SCHEME  # written before a scheme was recorded: taken as raw ids
                    if recorded not in (None, scheme) and recorded != RAW_SCHEME:
                        raise StoreUnavailable(
                            f"history store {self.where} holds user ids keyed as {recorded}, not {scheme}: set "
                            "TWOTOWER_PSEUDONYM_KEY to the key it was written with (the same on every replica)"
                        )
                    rekeyed = users if recorded == RAW_SCHEME and scheme != RAW_SCHEME else []
                    pipe.multi()
                    for user in rekeyed:
                        new = rekey(user)
                        for kind in ("e:", "v:"):
                            pipe.copy(self._k(kind + user), self._k(kind + new), replace=True)
                            pipe.delete(self._k(kind + user))
                        pipe.zrem(self._k("oldest"), user)
                        pipe.zadd(self._k("oldest"), {new: 0})
                    pipe.set(self._k("keys"), scheme)
                    pipe.execute()
                    break
                except rex.WatchError:
                    continue
        self.key_scheme = scheme
        if rekeyed:
            self.rewrite_files()
            log.info("%s: %d users' raw ids replaced by pseudonyms", self.where, len(rekeyed))
        return len(rekeyed)

    # ---- live catalog changes -----------------------------------------------------------------------
    def record_items(self, changes: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        """Store ``(item_id, "add" | "remove", categories)`` changes in one command (all or none)."""
        now = time.time()
        mapping = {item: json.dumps([action, list(cats), now]) for item, action, cats in changes}
        if mapping:
            with self._guard(write=True):
                self.r.hset(self._k("items"), mapping=mapping)

    def catalog_changes(self) -> list[tuple[str, str, list[str]]]:
        with self._guard("read"):
            raw = self.r.hgetall(self._k("items"))
        rows = sorted((json.loads(v)[2], item, *json.loads(v)[:2]) for item, v in raw.items())
        return [(item, action, cats) for _, item, action, cats in rows]


def _member(event: StoredEvent, stored_at: float) -> list:
    """The JSON body of a stored event: ``[item, event, dwell, stored_at]``, plus the query of a search (members
    written before searches were kept have four fields)."""
    body = [event.item_id, event.event, event.dwell_s, stored_at]
    return body if event.query is None else [*body, event.query]
