"""Where live user histories are kept: a small interface and its embedded default, SQLite in WAL mode.

An event is acknowledged only after its transaction committed (``synchronous=FULL`` by default: it survives
a killed process and a power cut). Each write is one transaction, so a reader sees all of a batch or none of
it. Per user the store keeps the most recent ``max_events`` events; ``retention_s`` bounds how long anything
is kept after it was stored. Writers and readers may be threads (one connection per thread) or processes
(SQLite's file locks, with a busy timeout).

Sharing between replicas: every replica opening one SQLite file works on one host only. Several hosts need a
networked store behind the same :class:`HistoryStore` interface: for example Redis, one list per user key
(``RPUSH`` + ``LTRIM -max_events -1`` in a ``MULTI`` block, ``EXPIRE`` for retention, ``WAIT``/AOF ``always``
for the same durability), ``version`` being a per-user counter ``INCR``-ed in the same block.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

DB_FILE = "history.sqlite3"


class StoreUnavailable(RuntimeError):
    """The store cannot take writes now (read-only, full or missing files); the message names the path.
    The service answers 503 and reports not ready while reads keep working."""


@dataclass(frozen=True)
class StoredEvent:
    """One interaction as stored (ids external, seconds since the epoch)."""

    item_id: str
    event: str
    dwell_s: float | None
    ts: float


class HistoryStore(Protocol):
    max_events: int

    def append(self, events: Sequence[tuple[str, StoredEvent]]) -> int: ...
    def append_tracked(
        self, events: Sequence[tuple[str, StoredEvent]]
    ) -> dict[str, tuple[int | None, int]]: ...
    def history(self, user_key: str) -> list[StoredEvent]: ...
    def version(self, user_key: str) -> int | None: ...
    def history_columns(self, user_key: str) -> tuple[tuple, tuple, tuple, tuple]: ...
    def erase(self, user_key: str) -> int: ...
    def seed(self, rows: Iterable[tuple[str, StoredEvent]], source: str) -> int: ...
    def sweep(self, now: float | None = None) -> int: ...
    def record_items(self, changes: Sequence[tuple[str, str, Sequence[str]]]) -> None: ...
    def catalog_changes(self) -> list[tuple[str, str, list[str]]]: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    dwell_s REAL,
    ts REAL NOT NULL,
    stored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_key, ts, seq);
CREATE INDEX IF NOT EXISTS events_by_age ON events (stored_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (user_key TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('clock', '0');
CREATE TABLE IF NOT EXISTS erasures (user_key TEXT NOT NULL, erased_at REAL NOT NULL, events INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS catalog_changes (
    item_id TEXT PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('add', 'remove')),
    categories TEXT NOT NULL,
    changed_at REAL NOT NULL
);
"""


class SQLiteHistoryStore:
    """The embedded default :class:`HistoryStore` (one file in ``state_dir``)."""

    def __init__(
        self,
        state_dir: str | Path,
        max_events: int,
        retention_s: float | None = None,
        synchronous: str = "FULL",
        busy_timeout_s: float = 30.0,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(state_dir) / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_events = int(max_events)
        self.retention_s = retention_s if retention_s and retention_s > 0 else None
        self._pragmas = (
            f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}",
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={synchronous.upper()}",
        )
        self._local = threading.local()
        self.db.executescript(SCHEMA)  # idempotent; executescript commits by itself

    # ---- connections --------------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            for pragma in self._pragmas:
                conn.execute(pragma)
            self._local.conn = conn
        return conn

    def _write(self) -> _Transaction:
        return _Transaction(self.db)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- histories ----------------------------------------------------------------------------------
    def append(self, events: Sequence[tuple[str, StoredEvent]]) -> int:
        """Store ``(user_key, event)`` pairs in one transaction; returns how many were stored."""
        self.append_tracked(events)
        return len(events)

    def append_tracked(self, events: Sequence[tuple[str, StoredEvent]]) -> dict[str, tuple[int | None, int]]:
        """:meth:`append`, returning each user's version just before and just after this write."""
        now = time.time()
        rows = [(u, e.item_id, e.event, e.dwell_s, e.ts, now) for u, e in events]
        users = list(dict.fromkeys(r[0] for r in rows))
        with self._write() as db:
            before = {u: self._version(db, u) for u in users}
            db.executemany(
                "INSERT INTO events (user_key, item_id, event, dwell_s, ts, stored_at) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            clock = _tick(db)
            for user in users:
                self._trim(db, user)
                db.execute(
                    "INSERT INTO users VALUES (?1, ?2) ON CONFLICT (user_key) DO UPDATE SET version = ?2",
                    (user, clock),
                )
        return {u: (before[u], clock) for u in users}

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
        """The same events as four columns (item_id, event, dwell_s, ts): the fast path for encoding."""
        rows = self._rows(user_key)
        return tuple(zip(*rows, strict=True)) if rows else ((), (), (), ())  # type: ignore[return-value]

    def _rows(self, user_key: str) -> list[tuple]:
        cutoff = time.time() - self.retention_s if self.retention_s else -np.inf
        return self.db.execute(
            "SELECT item_id, event, dwell_s, ts FROM events WHERE user_key = ? AND stored_at >= ? "
            "ORDER BY ts, seq",
            (user_key, cutoff),
        ).fetchall()

    def version(self, user_key: str) -> int | None:
        """A marker that changes whenever the user's history does (a store-wide write clock; never reused)."""
        return self._version(self.db, user_key)

    @staticmethod
    def _version(db: sqlite3.Connection, user_key: str) -> int | None:
        row = db.execute("SELECT version FROM users WHERE user_key = ?", (user_key,)).fetchone()
        return None if row is None else row[0]

    def erase(self, user_key: str) -> int:
        """Delete everything stored about a user; the erasure itself is logged (key, time, count)."""
        with self._write() as db:
            count = db.execute("DELETE FROM events WHERE user_key = ?", (user_key,)).rowcount
            db.execute("DELETE FROM users WHERE user_key = ?", (user_key,))
            db.execute("INSERT INTO erasures VALUES (?, ?, ?)", (user_key, time.time(), count))
        return count

    def erased_since(self, since: float = 0.0) -> list[str]:
        """User keys erased since ``since`` (for the retraining pipeline to leave out)."""
        rows = self.db.execute("SELECT DISTINCT user_key FROM erasures WHERE erased_at >= ?", (since,))
        return [r[0] for r in rows]

    def seed(self, rows: Iterable[tuple[str, StoredEvent]], source: str) -> int:
        """Load initial histories once per store (a later call is a no-op); returns how many were loaded."""
        with self._write() as db:
            if db.execute("SELECT value FROM meta WHERE key = 'seeded_from'").fetchone():
                return 0
            now = time.time()
            cursor = db.executemany(
                "INSERT INTO events (user_key, item_id, event, dwell_s, ts, stored_at) VALUES (?, ?, ?, ?, ?, ?)",
                ((u, e.item_id, e.event, e.dwell_s, e.ts, now) for u, e in rows),
            )
            db.execute("INSERT INTO meta VALUES ('seeded_from', ?)", (source,))
            clock = _tick(db)
            db.execute("INSERT OR REPLACE INTO users SELECT DISTINCT user_key, ? FROM events", (clock,))
            return cursor.rowcount

    def sweep(self, now: float | None = None) -> int:
        """Delete events stored longer than the retention window; returns how many."""
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
            return removed

    def counts(self) -> dict[str, int]:
        events, users = self.db.execute("SELECT count(*), count(DISTINCT user_key) FROM events").fetchone()
        return {"events": events, "users": users}

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


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error): writers queue instead of failing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb) -> None:
        self.db.execute("ROLLBACK" if kind else "COMMIT")
