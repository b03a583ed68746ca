"""Service settings from ``TWOTOWER_*`` environment variables and a ``.env`` file (pydantic-settings): typed and
validated, so that a bad value stops start-up with a message naming the variable. CLI flags override them."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

READ, WRITE, ADMIN = "read", "write", "admin"
SCOPES = frozenset({READ, WRITE, ADMIN})
PREFIX = "TWOTOWER_"
SYNCHRONOUS = ("FULL", "EXTRA", "NORMAL")  # OFF can lose acknowledged events and corrupt the file
STORE_SCHEMES = ("redis", "rediss", "unix")  # what TWOTOWER_STORE may name besides "" (SQLite)


class SettingsError(ValueError):
    """A setting with a bad value; the message names each variable and what it must be."""


class Settings(BaseModel):
    """The service's settings. Constructed directly, it holds the defaults and the values given, and reads no
    environment (tests and embedding code get exactly what they pass); :meth:`from_env` reads it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bundle: str = ""  # TWOTOWER_BUNDLE: bundle directory
    host: str = "127.0.0.1"  # TWOTOWER_HOST
    port: int = Field(8000, ge=0, le=65535)  # TWOTOWER_PORT (0: any free port)
    max_k: int = Field(1000, ge=1)  # TWOTOWER_MAX_K: largest k a request may ask for
    # TWOTOWER_MAX_HISTORY: longer histories are refused (422); the model reads the last max_len
    max_history: int = Field(1000, ge=1)
    max_filter_items: int = Field(
        100_000, ge=0
    )  # TWOTOWER_MAX_FILTER_ITEMS: cap on exclude_items / allow_items
    max_body_bytes: int = Field(1 << 20, ge=1)  # TWOTOWER_MAX_BODY_BYTES: larger bodies get 413
    threads: int = Field(1, ge=1)  # TWOTOWER_THREADS: ORT / FAISS threads per request
    read_concurrency: int = Field(
        0, ge=0
    )  # TWOTOWER_READ_CONCURRENCY: recommendations at once (0: cores - 1)
    verify: bool = True  # TWOTOWER_VERIFY: check bundle checksums at load
    state_dir: str = "state"  # TWOTOWER_STATE_DIR: where the history store (SQLite, WAL) lives
    # TWOTOWER_STORE: the history store; "" = SQLite under state_dir, redis://host:port/db = Redis
    store: str = ""
    api_token: str = ""  # TWOTOWER_API_TOKEN: a Bearer token holding every scope (read, write, admin)
    read_token: str = ""  # TWOTOWER_READ_TOKEN: a token with the read scope (stored user data)
    write_token: str = ""  # TWOTOWER_WRITE_TOKEN: a token with the write scope (events, items, erasure)
    admin_token: str = ""  # TWOTOWER_ADMIN_TOKEN: a token with the admin scope (/admin/*)
    metrics_need_token: bool = False  # TWOTOWER_METRICS_NEED_TOKEN: /metrics needs the read scope
    bundle_root: str = ""  # TWOTOWER_BUNDLE_ROOT: /admin/reload loads bundles under this directory only
    pseudonym_key: str = ""  # TWOTOWER_PSEUDONYM_KEY: HMAC key for user ids ("": a key file; "off": raw)
    # TWOTOWER_RETENTION_DAYS: events are deleted this long after storage (0 = keep)
    retention_days: float = Field(365.0, ge=0)
    max_events_per_user: int = Field(0, ge=0)  # TWOTOWER_MAX_EVENTS_PER_USER: 0 = the model's window + 1
    max_batch_events: int = Field(
        1000, ge=1
    )  # TWOTOWER_MAX_BATCH_EVENTS: larger POST /events batches get 413
    synchronous: str = "FULL"  # TWOTOWER_SYNCHRONOUS: FULL, EXTRA or NORMAL (OFF refused)
    seed_histories: bool = True  # TWOTOWER_SEED_HISTORIES: load the bundle's histories into an empty store
    # TWOTOWER_INTENT_BOOST: session-intent re-rank strength (-1 = bundle's, 0 = off)
    intent_boost: float = -1.0
    # the list re-rank's defaults (serving.core.diversify; -1 = the bundle's, 0 = off); requests may override
    diversity: float = -1.0  # TWOTOWER_DIVERSITY: 0..1, maximal marginal relevance on item vectors
    max_per_category: int = Field(
        -1, ge=-1
    )  # TWOTOWER_MAX_PER_CATEGORY: cap on items per category (0 = none)
    calibrate: float = -1.0  # TWOTOWER_CALIBRATE: 0..1, pull the list's category mix toward the history's
    explore: float = -1.0  # TWOTOWER_EXPLORE: 0..1, share of slots for unusual or long-tail items
    nprobe: int = Field(0, ge=0)  # TWOTOWER_NPROBE: inverted lists searched per query (0 = the bundle's)
    ef_search: int = Field(0, ge=0)  # TWOTOWER_EF_SEARCH: HNSW candidate list per query (0 = the bundle's)

    @field_validator("diversity", "calibrate", "explore")
    @classmethod
    def _share_or_unset(cls, value: float) -> float:
        if value != -1 and not 0 <= value <= 1:
            raise ValueError("must be in [0, 1], or -1 for the bundle's")
        return value

    @field_validator("intent_boost")
    @classmethod
    def _boost_or_unset(cls, value: float) -> float:
        if value != -1 and value < 0:
            raise ValueError("must be >= 0, or -1 for the bundle's")
        return value

    @field_validator("synchronous")
    @classmethod
    def _durable(cls, value: str) -> str:
        if value.strip().upper() not in SYNCHRONOUS:
            raise ValueError("must be FULL, EXTRA or NORMAL (OFF can lose acknowledged events)")
        return value.strip().upper()

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in STORE_SCHEMES:
            raise ValueError('must be "" (SQLite under the state dir) or a Redis URL (redis://host:port/db)')
        return value

    def load_kwargs(self) -> dict:
        """``Recommender.load`` arguments these settings give (start, reload, SIGHUP alike)."""
        boost = self.intent_boost if self.intent_boost >= 0 else None
        search = {
            name: value for name, value in (("nprobe", self.nprobe), ("ef_search", self.ef_search)) if value
        }
        ranking = {name: getattr(self, name) for name in ("diversity", "max_per_category", "calibrate", "explore")
                   if getattr(self, name) >= 0}  # fmt: skip
        return {"threads": self.threads, "verify": self.verify, "intent_boost": boost, "search": search,
                "ranking": ranking}  # fmt: skip

    def tokens(self) -> list[tuple[str, frozenset[str]]]:
        """Each configured token with the scopes it holds (a value given twice holds both sets)."""
        given = ((self.api_token, SCOPES), (self.read_token, frozenset({READ})),
                 (self.write_token, frozenset({WRITE})), (self.admin_token, frozenset({ADMIN})))  # fmt: skip
        return [(token, scopes) for token, scopes in given if token]

    @property
    def auth_enabled(self) -> bool:
        """Any token configured: from then on every protected operation needs its scope."""
        return bool(self.tokens())

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    @classmethod
    def from_env(cls, env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
        """``TWOTOWER_*`` variables, then ``env_file`` (a variable set in both: the environment's), under
        ``overrides`` (the CLI flags; ``None`` = not given). A bad value raises :class:`SettingsError`."""
        given = {name: value for name, value in overrides.items() if value is not None}
        try:
            return _FromEnv(_env_file=env_file, **given)
        except ValidationError as exc:
            raise SettingsError(describe(exc, given)) from None


class _FromEnv(Settings, BaseSettings):
    """:class:`Settings` read from the environment and the ``.env`` file (values passed in win)."""

    # An empty variable is the default (as compose files write an unset one). Other names are ignored: the
    # .env file may hold other tools' variables, and TWOTOWER_DATA_DIR and the like are not the service's.
    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_file=".env", env_ignore_empty=True, extra="ignore"
    )


def describe(exc: ValidationError, given: dict[str, Any]) -> str:
    """One line per bad value: the variable (or the flag's field, when the value was passed in) and why."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        name = field if field in given else PREFIX + field.upper().removeprefix(PREFIX)
        reason = error["msg"].removeprefix("Value error, ")
        lines.append(f"{name}={error.get('input')!r}: {reason}")
    return "invalid settings: " + "; ".join(lines)
