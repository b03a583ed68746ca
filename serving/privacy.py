"""User ids as keyed pseudonyms: the key (configured, or created once in the state dir), the keyed hash, and
what the erasure log may hold.

Pseudonymisation is on by default, so the history store never holds a raw user id: a key the operator gives
(``TWOTOWER_PSEUDONYM_KEY``) or, failing that, a random one created on first start in
``STATE_DIR/pseudonym.key`` (mode 0600) and reused afterwards. ``TWOTOWER_PSEUDONYM_KEY=off`` stores ids as
given, for deployments that need to read raw ids back out of the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from serving.sqlitedb import StoreUnavailable

log = logging.getLogger(__name__)

KEY_FILE = "pseudonym.key"
OFF = "off"
RAW_SCHEME = "raw"


def has_lone_surrogate(text: str) -> bool:
    """True if ``text`` cannot be written as UTF-8 (a lone surrogate such as ``"\\ud800"`` from JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def user_key(key: bytes | None, user_id: str) -> str:
    """How a user id is stored: HMAC-SHA256 under ``key``, or as given when ``key`` is None.

    Raises ValueError naming ``user_id`` for an id that cannot be stored (not valid UTF-8)."""
    user_id = str(user_id)
    if key is None:
        if has_lone_surrogate(user_id):
            raise ValueError(f"user_id {user_id!r} holds a lone surrogate (not valid UTF-8)")
        return user_id
    return hmac.new(key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def key_scheme(key: bytes | None) -> str:
    """How keys are made, as the store records it: ``raw`` or ``hmac-sha256:<fingerprint>``; the fingerprint
    tells keys apart without revealing them, so a store is never read with the wrong key."""
    if key is None:
        return RAW_SCHEME
    return "hmac-sha256:" + hmac.new(key, b"twotower key fingerprint", hashlib.sha256).hexdigest()[:16]


def erasure_key(stored_key: str) -> str:
    """What the erasure log holds for a user: a SHA-256 of their stored key, so neither the raw id nor the
    pseudonym stays in the files, while a retraining job can still match ``erasure_key(user_key(id))``."""
    return hashlib.sha256(stored_key.encode("utf-8", "surrogatepass")).hexdigest()


def pseudonym_key(state_dir: str | Path, configured: str = "", create: bool = True) -> bytes | None:
    """The key user ids are hashed under: ``configured`` if set, None for ``off``, else the state dir's key
    file (created on first start when ``create``; without it a missing file means raw ids, as a read-only
    reader of an old store needs)."""
    if configured.strip().lower() == OFF:
        log.warning("pseudonymisation is off: user ids are stored as given")
        return None
    if configured:
        return configured.encode()
    path = Path(state_dir) / KEY_FILE
    try:
        if path.exists():
            return _read_key(path)
        return _create_key(path) if create else None
    except OSError as exc:
        raise StoreUnavailable(f"pseudonym key {path} cannot be read or created: {exc}") from exc


def _read_key(path: Path) -> bytes:
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"{path} is empty: restore the key, or move the state dir away to start afresh")
    return key.encode()


def _create_key(path: Path) -> bytes:
    """Write a random key with owner-only permissions, atomically: a second process starting at the same
    moment either creates it or reads the one the first created, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    temp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # fails if another process got there first: then its key is the key
        except FileExistsError:
            return _read_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    _sync_dir(path.parent)
    log.info("created pseudonym key %s", path)
    return key.encode()


def _sync_dir(directory: Path) -> None:
    """Make the new key file's directory entry durable (the key must outlive a power cut with the store)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
