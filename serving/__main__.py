"""`python -m serving --bundle BUNDLE [--state-dir DIR] [--host 127.0.0.1] [--port 8000]` (flags override TWOTOWER_*)."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import tempfile
from pathlib import Path
from typing import NoReturn

import uvicorn

from serving.app import create_app, open_live_service
from serving.live import LiveService
from serving.settings import Settings, SettingsError
from serving.store import StoreUnavailable


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--bundle", help="bundle directory (TWOTOWER_BUNDLE)")
    parser.add_argument("--host", help="bind address (TWOTOWER_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (TWOTOWER_PORT, default 8000)")
    parser.add_argument("--threads", type=int, help="threads per request (TWOTOWER_THREADS, default 1)")
    parser.add_argument("--state-dir", help="history store directory (TWOTOWER_STATE_DIR, default ./state)")
    parser.add_argument("--nprobe", type=int, help="inverted lists searched per query (TWOTOWER_NPROBE)")
    parser.add_argument("--ef-search", type=int, help="HNSW candidate list per query (TWOTOWER_EF_SEARCH)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(
            bundle=args.bundle, host=args.host, port=args.port, threads=args.threads, state_dir=args.state_dir,
            nprobe=args.nprobe, ef_search=args.ef_search,
        )  # fmt: skip
    except SettingsError as exc:
        parser.error(str(exc))
    if not settings.bundle:
        parser.error("no bundle: pass --bundle or set TWOTOWER_BUNDLE")
    if not settings.loopback and not settings.auth_enabled:
        parser.error(
            f"refusing to listen on {settings.host} without a token (TWOTOWER_API_TOKEN or a scoped one): "
            "user data and writes would be open"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    live = start(settings)
    uvicorn.run(
        create_app(settings, live=live), host=settings.host, port=settings.port, log_level="warning",
        access_log=False,
    )  # fmt: skip


def start(settings: Settings) -> LiveService:
    """Open the bundle and the store before listening; an expected failure exits with one line naming the
    path (no traceback)."""
    bundle, state = Path(settings.bundle), Path(settings.state_dir)
    if not bundle.is_dir():
        fail(f"bundle {bundle}: no such directory")
    try:
        state.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state):
            pass
    except OSError as exc:
        fail(f"state dir {state} is not writable: {exc.strerror or exc}")
    try:
        return open_live_service(settings)
    except Exception as exc:  # noqa: BLE001 - a broken bundle fails in whichever library reads the bad file
        if isinstance(exc, StoreUnavailable | sqlite3.Error) or raised_in(exc, STATE_MODULES):
            fail(f"history store in {state}: {type(exc).__name__}: {exc}")
        fail(f"bundle {bundle} not loaded: {type(exc).__name__}: {exc}")


STATE_MODULES = (
    "serving.store",
    "serving.sqlitedb",
    "serving.privacy",
    "serving.redisstore",
    "serving.redisdb",
)  # what reads the state dir


def raised_in(exc: BaseException, modules: tuple[str, ...]) -> bool:
    """Whether ``exc`` was raised in (or passed through) one of ``modules``."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") in modules:
            return True
        tb = tb.tb_next
    return False


def fail(message: str) -> NoReturn:
    raise SystemExit(f"python -m serving: error: {message}")


if __name__ == "__main__":
    main()
