"""Service settings from environment variables prefixed ``TWOTOWER_`` (CLI flags override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

READ, WRITE, ADMIN = "read", "write", "admin"
SCOPES = frozenset({READ, WRITE, ADMIN})


@dataclass
class Settings:
    bundle: str = ""  # TWOTOWER_BUNDLE: bundle directory
    host: str = "127.0.0.1"  # TWOTOWER_HOST
    port: int = 8000  # TWOTOWER_PORT
    max_k: int = 1000  # TWOTOWER_MAX_K: largest k a request may ask for
    max_history: int = (
        1000  # TWOTOWER_MAX_HISTORY: longer histories are refused (422); the model reads the last max_len
    )
    max_filter_items: int = 100_000  # TWOTOWER_MAX_FILTER_ITEMS: cap on exclude_items / allow_items
    max_body_bytes: int = 1 << 20  # TWOTOWER_MAX_BODY_BYTES: larger bodies get 413
    threads: int = 1  # TWOTOWER_THREADS: ORT / FAISS threads per request
    read_concurrency: int = 0  # TWOTOWER_READ_CONCURRENCY: recommendations at once (0: cores - 1)
    verify: bool = True  # TWOTOWER_VERIFY: check bundle checksums at load
    state_dir: str = "state"  # TWOTOWER_STATE_DIR: where the history store (SQLite, WAL) lives
    api_token: str = ""  # TWOTOWER_API_TOKEN: a Bearer token holding every scope (read, write, admin)
    read_token: str = ""  # TWOTOWER_READ_TOKEN: a token with the read scope (stored user data)
    write_token: str = ""  # TWOTOWER_WRITE_TOKEN: a token with the write scope (events, items, erasure)
    admin_token: str = ""  # TWOTOWER_ADMIN_TOKEN: a token with the admin scope (/admin/*)
    metrics_need_token: bool = False  # TWOTOWER_METRICS_NEED_TOKEN: /metrics needs the read scope
    bundle_root: str = ""  # TWOTOWER_BUNDLE_ROOT: /admin/reload loads bundles under this directory only
    pseudonym_key: str = ""  # TWOTOWER_PSEUDONYM_KEY: HMAC key for user ids ("": a key file; "off": raw)
    retention_days: float = (
        365.0  # TWOTOWER_RETENTION_DAYS: events are deleted this long after storage (0 = keep)
    )
    max_events_per_user: int = 0  # TWOTOWER_MAX_EVENTS_PER_USER: 0 = the model's window + 1
    max_batch_events: int = 1000  # TWOTOWER_MAX_BATCH_EVENTS: larger POST /events batches get 413
    synchronous: str = "FULL"  # TWOTOWER_SYNCHRONOUS: FULL, EXTRA or NORMAL (OFF refused)
    seed_histories: bool = True  # TWOTOWER_SEED_HISTORIES: load the bundle's histories into an empty store
    intent_boost: float = (
        -1.0
    )  # TWOTOWER_INTENT_BOOST: session-intent re-rank strength (-1 = bundle's, 0 = off)
    # the list re-rank's defaults (serving.core.diversify; -1 = the bundle's, 0 = off); requests may override
    diversity: float = -1.0  # TWOTOWER_DIVERSITY: 0..1, maximal marginal relevance on item vectors
    max_per_category: int = -1  # TWOTOWER_MAX_PER_CATEGORY: cap on items per category (0 = none)
    calibrate: float = -1.0  # TWOTOWER_CALIBRATE: 0..1, pull the list's category mix toward the history's
    explore: float = -1.0  # TWOTOWER_EXPLORE: 0..1, share of slots for unusual or long-tail items
    nprobe: int = 0  # TWOTOWER_NPROBE: inverted lists searched per query (0 = the bundle's)
    ef_search: int = 0  # TWOTOWER_EF_SEARCH: HNSW candidate list per query (0 = the bundle's)

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
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"TWOTOWER_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            elif f.type in ("bool", bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
