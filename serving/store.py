"""The embedded default :class:`~serving.historystore.HistoryStore` of live user histories: SQLite in WAL mode.

An event is acknowledged only after its transaction committed (``synchronous=FULL`` by default, checked
on every connection: it survives a killed process and a power cut). Each write is one transaction, so a
reader sees all of a batch or none of it. Per user the store keeps the most recent ``max_events`` events;
``retention_s`` bounds how long anything is kept after it was stored. Writers and readers may be threads or
processes. An erasure overwrites the rows and truncates the WAL: the bytes leave the files, not only the
answers (see :mod:`serving.sqlitedb` for the file, its settings and :class:`StoreUnavailable`).

Sharing between replicas: every replica opening one SQLite file works on one host only. Several hosts share a
Redis behind the same :class:`~serving.historystore.HistoryStore` interface (``TWOTOWER_STORE=redis://...``:
:mod:`serving.redisstore`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from serving.historystore import Appended, StoredEvent, columns_of
from serving.privacy import RAW_SCHEME, erasure_key
from serving.sqlitedb import SQLiteFile, StoreUnavailable

__all__ = ["SQLiteHistoryStore", "StoreUnavailable"]

log = logging.getLogger(__name__)

DB_FILE = "history.sqlite3"
LEGACY_PSEUDONYMS = "hmac-sha256:unrecorded"  # pseudonyms written before the store recorded its key
_HEX64 = re.compile(r"[0-9a-f]{64}")


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    dwell_s REAL,
    ts REAL NOT NULL,
    stored_at REAL NOT NULL,
    query TEXT
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_key, ts, seq);
CREATE INDEX IF NOT EXISTS events_by_age ON events (stored_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (user_key TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('clock', '0');
CREATE TABLE IF NOT EXISTS erasures (user_key TEXT NOT NULL, erased_at REAL NOT NULL, events INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS erasures_by_key ON erasures (user_key);
CREATE TABLE IF NOT EXISTS catalog_changes (
    item_id TEXT PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('add', 'remove')),
    categories TEXT NOT NULL,
    changed_at REAL NOT NULL
);
"""


class SQLiteHistoryStore(SQLiteFile):
    """The embedded default :class:`~serving.historystore.HistoryStore` (one file in ``state_dir``)."""

    def __init__(
        self,
        state_dir: str | Path,
        max_events: int,
        retention_s: float | None = None,
        synchronous: str = "FULL",
        busy_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(Path(state_dir) / DB_FILE, synchronous, busy_timeout_s)
        self.max_events = int(max_events)
        self.retention_s = retention_s if retention_s and retention_s > 0 else None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db.executescript(SCHEMA)  # idempotent; executescript commits by itself
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(events)")}
            if "query" not in columns:  # a store from before searches were kept
                self.db.execute("ALTER TABLE events ADD COLUMN query TEXT")
                self.db.commit()
            self.key_scheme = self._meta(self.db, "user_keys")
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"history store {self.path} cannot be opened for writing: {exc}") from exc

    # ---- histories ----------------------------------------------------------------------------------
    def append(self, events: Sequence[tuple[str, StoredEvent]]) -> int:
        """Store ``(user_key, event)`` pairs in one transaction; returns how many were kept."""
        return len(events) - self.append_tracked(events).trimmed

    def append_tracked(self, events: Sequence[tuple[str, StoredEvent]]) -> Appended:
        """:meth:`append`, returning each user's version before and after and how many events were trimmed."""
        now = time.time()
        rows = [(u, e.item_id, e.event, e.dwell_s, e.ts, now, e.query) for u, e in events]
        users = list(dict.fromkeys(r[0] for r in rows))
        with self._write() as db:
            before = {u: self._version(db, u) for u in users}
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            db.executemany(
                "INSERT INTO events (user_key, item_id, event, dwell_s, ts, stored_at, query) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            clock = _tick(db)
            for user in users:
                self._trim(db, user)
                db.execute(
                    "INSERT INTO users VALUES (?1, ?2) ON CONFLICT (user_key) DO UPDATE SET version = ?2",
                    (user, clock),
                )
            kept = db.execute("SELECT count(*) FROM events WHERE seq > ?", (last,)).fetchone()[0]
        return Appended({u: (before[u], clock) for u in users}, trimmed=len(rows) - kept)

    def _trim(self, db: sqlite3.Connection, user_key: str) -> None:
        """Keep only the user's ``max_events`` most recent events."""
        db.execute(
            "DELETE FROM events WHERE user_key = ?1 AND seq NOT IN (SELECT seq FROM events WHERE user_key = ?1 "
            "ORDER BY ts DESC, seq DESC LIMIT ?2)",
            (user_key, self.max_events),
        )

    def history(self, user_key: str) -> list[StoredEvent]:
        """The user's stored events, oldest first (by time, then arrival)."""
        return [StoredEvent(*row) for row in self._rows(user_key)]

    def history_columns(self, user_key: str) -> tuple[tuple, tuple, tuple, tuple]:
        """The same events as four columns (item_id, event, dwell_s, ts): the fast path for encoding. A search's
        item is ``{"query": text}`` (:func:`~serving.historystore.history_entry`)."""
        return columns_of(self._rows(user_key))

    def _rows(self, user_key: str) -> list[tuple]:
        cutoff = time.time() - self.retention_s if self.retention_s else -math.inf
        with self._read() as db:  # an unreadable file: StoreUnavailable ("read"), answered 503
            return db.execute(
                "SELECT item_id, event, dwell_s, ts, query FROM events WHERE user_key = ? AND stored_at >= ? "
                "ORDER BY ts, seq",
                (user_key, cutoff),
            ).fetchall()

    def version(self, user_key: str) -> int | None:
        """A marker that changes whenever the user's history does (a store-wide write clock; never reused)."""
        with self._read() as db:
            return self._version(db, user_key)

    @staticmethod
    def _version(db: sqlite3.Connection, user_key: str) -> int | None:
        row = db.execute("SELECT version FROM users WHERE user_key = ?", (user_key,)).fetchone()
        return None if row is None else row[0]

    def erase(self, user_key: str) -> int:
        """Delete everything stored about a user, expired or not, from the files too; the erasure is logged
        as (a hash of the stored key, time, count): neither the id nor its pseudonym."""
        with self._write() as db:
            count = db.execute("DELETE FROM events WHERE user_key = ?", (user_key,)).rowcount
            db.execute("DELETE FROM users WHERE user_key = ?", (user_key,))
            db.execute("INSERT INTO erasures VALUES (?, ?, ?)",
                       (erasure_key(user_key), time.time(), count))  # fmt: skip
        self._checkpoint()
        return count

    def erased_since(self, since: float = 0.0) -> list[str]:
        """Erased users since ``since`` as the log holds them (:func:`serving.privacy.erasure_key`), for the
        retraining pipeline to leave out; entries older than the retention window are pruned."""
        with self._read() as db:
            rows = db.execute("SELECT DISTINCT user_key FROM erasures WHERE erased_at >= ?", (since,))
            return [r[0] for r in rows]

    def is_erased(self, user_key: str) -> bool:
        """Whether the erasure log (pruned by retention) names this user: what the bundle still holds about
        them until a retrain (their profile) is then not used."""
        with self._read() as db:
            row = db.execute("SELECT 1 FROM erasures WHERE user_key = ? LIMIT 1", (erasure_key(user_key),))
            return row.fetchone() is not None

    def seed(self, rows: Iterable[tuple[str, StoredEvent]], source: str) -> int:
        """Load initial histories once per store (a later call is a no-op); returns how many were loaded."""
        with self._write() as db:
            if db.execute("SELECT value FROM meta WHERE key = 'seeded_from'").fetchone():
                return 0
            now = time.time()
            cursor = db.executemany(
                "INSERT INTO events (user_key, item_id, event, dwell_s, ts, stored_at, query) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((u, e.item_id, e.event, e.dwell_s, e.ts, now, e.query) for u, e in rows),
            )
            db.execute("INSERT INTO meta VALUES ('seeded_from', ?)", (source,))
            clock = _tick(db)
            db.execute("INSERT OR REPLACE INTO users SELECT DISTINCT user_key, ? FROM events", (clock,))
            return cursor.rowcount

    def sweep(self, now: float | None = None) -> int:
        """Delete events stored, and erasure records logged, longer ago than the retention window; returns
        how many events. Users who lost events get a new version, so no cache keeps serving them."""
        if not self.retention_s:
            return 0
        cutoff = (now or time.time()) - self.retention_s
        with self._write() as db:
            clock = _tick(db)
            db.execute(
                "UPDATE users SET version = ? WHERE user_key IN (SELECT user_key FROM events WHERE stored_at < ?)",
                (clock, cutoff),
            )
            removed = db.execute("DELETE FROM events WHERE stored_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM users WHERE user_key NOT IN (SELECT user_key FROM events)")
            pruned = db.execute("DELETE FROM erasures WHERE erased_at < ?", (cutoff,)).rowcount
        if removed or pruned:
            self._checkpoint()
        return removed

    def counts(self) -> dict[str, int]:
        events, users = self.db.execute("SELECT count(*), count(DISTINCT user_key) FROM events").fetchone()
        return {"events": events, "users": users}

    # ---- how user keys are made ---------------------------------------------------------------------
    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def adopt_key_scheme(self, scheme: str, rekey: Callable[[str], str]) -> int:
        """Record how user keys are made (:func:`serving.privacy.key_scheme`). A store of raw ids is re-keyed
        with ``rekey`` once, in one transaction, when pseudonymisation is turned on; any other change is
        refused, since old keys cannot be mapped to new ones. Returns how many users were re-keyed."""
        with self._write() as db:
            recorded = self._meta(db, "user_keys") or self._unrecorded_scheme(db)
            rekeyed = 0
            if recorded == LEGACY_PSEUDONYMS and scheme != RAW_SCHEME:
                log.warning(
                    "%s: pseudonyms from an older version; assuming they were made with this key", self.path
                )
            elif recorded not in (None, scheme):
                if recorded != RAW_SCHEME:
                    raise StoreUnavailable(
                        f"history store {self.path} holds user ids keyed as {recorded}, not {scheme}: set "
                        "TWOTOWER_PSEUDONYM_KEY to the key it was written with, or start a new state dir"
                    )
                db.create_function("rekey", 1, rekey, deterministic=True)
                rekeyed = db.execute("UPDATE users SET user_key = rekey(user_key)").rowcount
                db.execute("UPDATE events SET user_key = rekey(user_key)")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('user_keys', ?)", (scheme,))
        self.key_scheme = scheme
        if rekeyed:
            try:
                self.db.execute("VACUUM")  # rewrites the file: no free page keeps a raw id
            except sqlite3.Error as exc:
                log.warning(
                    "%s: VACUUM after re-keying failed (%s); freed pages were overwritten", self.path, exc
                )
            self._checkpoint()
            log.info("%s: %d users' raw ids replaced by pseudonyms", self.path, rekeyed)
        return rekeyed

    def _unrecorded_scheme(self, db: sqlite3.Connection) -> str | None:
        """A store from before schemes were recorded: raw ids unless every key looks like a pseudonym. Its
        erasure log (stored keys then) is hashed on the way."""
        keys = [r[0] for r in db.execute("SELECT user_key FROM users UNION SELECT user_key FROM erasures")]
        if not keys:
            return None
        db.create_function("erasure_key", 1, erasure_key, deterministic=True)
        db.execute("UPDATE erasures SET user_key = erasure_key(user_key)")
        return LEGACY_PSEUDONYMS if all(_HEX64.fullmatch(k) for k in keys) else RAW_SCHEME

    # ---- live catalog changes (items added or removed without retraining) ---------------------------
    def record_items(self, changes: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        """Store ``(item_id, "add" | "remove", categories)`` changes in one transaction (all or none)."""
        now = time.time()
        with self._write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO catalog_changes VALUES (?, ?, ?, ?)",
                [
                    (item_id, action, json.dumps(list(categories)), now)
                    for item_id, action, categories in changes
                ],
            )

    def catalog_changes(self) -> list[tuple[str, str, list[str]]]:
        rows = self.db.execute("SELECT item_id, action, categories FROM catalog_changes ORDER BY changed_at")
        return [(item, action, json.loads(cats)) for item, action, cats in rows]


def _tick(db: sqlite3.Connection) -> int:
    """Advance and return the store-wide write clock (inside the caller's write transaction)."""
    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'clock'")
    return int(db.execute("SELECT value FROM meta WHERE key = 'clock'").fetchone()[0])
