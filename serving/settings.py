"""Service settings from environment variables prefixed ``TWOTOWER_`` (CLI flags override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


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
    verify: bool = True  # TWOTOWER_VERIFY: check bundle checksums at load

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"TWOTOWER_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("bool", bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
