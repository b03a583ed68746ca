"""The FastAPI app: wires settings, the bundle and history store (opened in ``lifespan``), middleware, routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.live import LiveService, apply_catalog_changes, seed_rows
from serving.live_routes import router as live_router
from serving.recommender import Recommender
from serving.routes import router
from serving.settings import Settings
from serving.store import SQLiteHistoryStore
from serving.telemetry import BodyLimitMiddleware, TelemetryMiddleware

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 600.0


def open_live_service(settings: Settings) -> LiveService:
    """Bundle + store (seeded once from the bundle's histories) + replayed catalog changes."""
    rec = Recommender.load(settings.bundle, **settings.load_kwargs())
    store = SQLiteHistoryStore(
        settings.state_dir,
        max_events=settings.max_events_per_user or rec.max_len + 1,
        retention_s=settings.retention_days * 86_400.0,
        synchronous=settings.synchronous,
    )
    live = LiveService(rec, store, pseudonym_key=settings.pseudonym_key or None)
    if settings.seed_histories:
        seeded = store.seed(((live.user_key(u), e) for u, e in seed_rows(rec)), source=rec.model_version)
        if seeded:
            log.info("seeded the history store with %d events from the bundle", seeded)
    apply_catalog_changes(rec, store)
    store.sweep()
    return live


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        live = await asyncio.to_thread(open_live_service, settings)
        app.state.live = live
        log.info("loaded bundle %s (%s), state in %s", settings.bundle, live.recommender.model_version,
                 settings.state_dir)  # fmt: skip
        loop = asyncio.get_running_loop()
        with contextlib.suppress(
            NotImplementedError, RuntimeError, ValueError
        ):  # not on every platform/thread
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_in_background(app)))
        sweeper = loop.create_task(sweep_forever(live))
        yield
        sweeper.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        app.state.live = None

    app = FastAPI(
        title="twotower",
        summary="Two-tower retrieval: live-history user vectors (ONNX) + FAISS search",
        version="0.2.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.live = None
    app.include_router(router)
    app.include_router(live_router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TelemetryMiddleware)
    return app


async def reload_in_background(app: FastAPI) -> None:
    """SIGHUP: reload the configured bundle; a failure is logged and the old bundle keeps serving."""
    try:
        settings = app.state.settings
        await asyncio.to_thread(app.state.live.reload, settings.bundle, **settings.load_kwargs())
    except Exception:  # noqa: BLE001 - a bad bundle must not take the server down
        log.exception("reload on SIGHUP failed; still serving %s", app.state.live.recommender.model_version)


async def sweep_forever(live: LiveService) -> None:
    """Enforce the retention window periodically (reads already ignore expired events)."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        try:
            removed = await asyncio.to_thread(live.store.sweep)
            if removed:
                log.info("retention: deleted %d expired events", removed)
        except Exception:  # noqa: BLE001
            log.exception("retention sweep failed")
