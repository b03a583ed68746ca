"""One SQLite file as the store uses it: a connection per thread with checked durability settings, write
transactions that queue, and the mapping of a write the disk refuses to :class:`StoreUnavailable`."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SYNCHRONOUS = {"NORMAL": 1, "FULL": 2, "EXTRA": 3}  # OFF is refused: a power cut can corrupt the file
# SQLite primary result codes of a write the disk refuses (no permission, I/O error, read-only, full, cannot
# open) and of one that waited past the busy timeout (the file is fine, only busy).
UNWRITABLE = {3, 8, 10, 13, 14}
BUSY = {5, 6}
UNREADABLE = UNWRITABLE | BUSY | {7, 11, 26}  # a read: also out of memory, a corrupt file, not a database


class StoreUnavailable(RuntimeError):
    """The store cannot take writes now (read-only, full or missing files); the message names the path.
    The service answers 503 and reports not ready while reads keep working. ``operation`` says what failed
    ("write", "read" or "open"), for the 503's message."""

    def __init__(self, message: str, operation: str = "write") -> None:
        super().__init__(message)
        self.operation = operation


class SQLiteFile:
    """A SQLite file in WAL mode with ``secure_delete`` (deleted rows are overwritten, not just unlinked)."""

    def __init__(self, path: Path, synchronous: str = "FULL", busy_timeout_s: float = 30.0) -> None:
        if str(synchronous).upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r} (OFF can lose "
                             "acknowledged events and corrupt the file on a power cut)")  # fmt: skip
        self.path = path
        self.synchronous = synchronous.upper()
        self._pragmas = (
            f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}",
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={self.synchronous}",
            "PRAGMA secure_delete=ON",
        )
        self._local = threading.local()
        self.writable = True  # False from a write the disk refused until one succeeds

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
                for pragma in self._pragmas:
                    conn.execute(pragma)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"history store {self.path} cannot be opened: {exc}", "open") from exc
            self._check_settings(conn)
            self._local.conn = conn
        return conn

    def _check_settings(self, conn: sqlite3.Connection) -> None:
        """Read the settings back: a pragma SQLite ignored must not pass for one that applied."""
        got = tuple(conn.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("synchronous", "journal_mode", "secure_delete"))  # fmt: skip
        want = (SYNCHRONOUS[self.synchronous], "wal", 1)
        if got != want:
            conn.close()
            raise StoreUnavailable(
                f"history store {self.path}: (synchronous, journal_mode, secure_delete) is {got}, not {want}"
            )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (writers queue instead of failing), ``ROLLBACK`` on any error.
        A write the disk refuses raises :class:`StoreUnavailable` naming the file and marks the store not
        writable until a write succeeds."""
        try:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite rolls some failures (a full disk) back by itself
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code not in UNWRITABLE | BUSY:
                raise
            self.writable = self.writable and code in BUSY
            raise StoreUnavailable(f"history store {self.path} cannot take writes: {exc}") from exc
        self.writable = True

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read: an error SQLite reports about the file (unreadable, corrupt, busy past the timeout) raises
        :class:`StoreUnavailable` ("read") naming it; any other error (a bug) propagates."""
        try:
            yield self.db
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in UNREADABLE:
                raise
            raise StoreUnavailable(f"history store {self.path} cannot be read: {exc}", "read") from exc

    def reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A read guard for callers outside the store (as :meth:`_read`)."""
        return self._read()

    def probe(self) -> bool:
        """Whether the store takes writes now (a one-row write): how an unwritable store recovers when no
        client write comes to show it."""
        with contextlib.suppress(StoreUnavailable), self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('probed_at', ?)", (repr(time.time()),))
        return self.writable

    def _checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it, so deleted rows' old page images leave the disk."""
        try:
            busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            busy = exc
        if busy:
            log.warning("%s: WAL not truncated (%s); deleted pages stay in it until the next checkpoint",
                        self.path, "a reader was active" if busy == 1 else busy)  # fmt: skip

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
