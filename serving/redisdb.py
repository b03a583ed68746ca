"""One Redis database as the history store uses it: a checked URL (its password never in a message), a
connection pool, the mapping of an unreachable or write-refusing server to :class:`StoreUnavailable`, the
persistence settings checked on open, and AOF rewrites (so erased data leaves Redis's files)."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import redis
from redis import exceptions as rex

from serving.sqlitedb import StoreUnavailable

log = logging.getLogger(__name__)

# errors that mean "the store cannot take this write now", not a bug: answered 503, reads may still work
REFUSALS = ("OOM", "MISCONF", "READONLY", "NOREPLICAS", "LOADING", "BUSY", "MASTERDOWN", "NOAUTH", "NOPERM")


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class RedisDatabase:
    """A connection pool to one Redis database (thread-safe), every key under ``prefix``."""

    def __init__(self, url: str, prefix: str = "twotower:", timeout_s: float = 10.0) -> None:
        self.where = redact(url)
        self.path = self.where  # messages name it as the SQLite store names its file
        self.prefix = prefix
        self.writable = True
        parts = urlsplit(url)
        if parts.scheme != "unix" and not re.fullmatch(r"/?\d*", parts.path):
            raise ValueError(
                f"TWOTOWER_STORE={self.where!r}: the path must be a database number (redis://host:port/0)"
            )
        try:
            self.r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                          health_check_interval=5, decode_responses=True)  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"TWOTOWER_STORE={self.where!r}: {exc}") from exc
        with self._guard("opened"):
            self.r.ping()
        self.persistence = self._persistence()

    def _k(self, name: str) -> str:
        return self.prefix + name

    @contextlib.contextmanager
    def _guard(self, doing: str = "written", write: bool = False) -> Iterator[None]:
        """Redis unreachable or refusing writes -> :class:`StoreUnavailable` naming the server."""
        try:
            yield
        except (rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError, rex.ResponseError) as exc:
            if isinstance(exc, rex.ResponseError) and not str(exc).upper().startswith(REFUSALS):
                raise
            if write:
                self.writable = False
            operation = {"read": "read", "opened": "open"}.get(doing, "write")
            message = f"history store {self.where} cannot be {doing}: {exc}"
            raise StoreUnavailable(message, operation) from exc
        if write:
            self.writable = True

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """A read guard for callers outside the store (an unreachable server: StoreUnavailable, "read")."""
        return self._guard("read")

    def _persistence(self) -> str:
        """``appendonly``/``appendfsync`` as the server reports them; a warning when acknowledged events can be
        lost on a crash (CONFIG may be disabled on a managed Redis: then it is only logged as unknown)."""
        try:
            got = self.r.config_get("append*")
            aof, fsync = got.get("appendonly"), got.get("appendfsync")
        except rex.RedisError as exc:
            log.warning(
                "%s: persistence settings unreadable (%s); durability is the server's", self.where, exc
            )
            return "unknown"
        state = f"appendonly={aof} appendfsync={fsync}"
        if (aof, fsync) != ("yes", "always"):
            log.warning("%s: %s; a Redis or host crash can lose acknowledged events (appendonly yes, "
                        "appendfsync always loses none)", self.where, state)  # fmt: skip
        return state

    def rewrite_files(self, wait_s: float = 60.0) -> None:
        """Start an AOF rewrite that begins after now (one already running forked before this erasure, so it
        is waited out first): the rewritten files hold the current data only."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.r.bgrewriteaof()
                return
            except rex.ResponseError as exc:
                if "already in progress" not in str(exc) or time.monotonic() > deadline:
                    log.warning("%s: AOF rewrite after an erasure not started (%s)", self.where, exc)
                    return
            except rex.RedisError as exc:
                log.warning("%s: AOF rewrite after an erasure not started (%s)", self.where, exc)
                return
            time.sleep(0.05)

    def rewrite_done(self) -> bool:
        """No AOF rewrite running or scheduled (tests wait for this before reading the files)."""
        info = self.r.info("persistence")
        return not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled")
