"""The FastAPI app: wires settings, the bundle and history store (opened in ``lifespan``), middleware, routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving import allow, errors, openapi
from serving.audience_routes import router as audience_router
from serving.fairness import FairGate
from serving.historystore import seed_rows
from serving.live import LiveService, apply_catalog_changes
from serving.live_routes import router as live_router
from serving.page import mount_page
from serving.paths import RawPathRouting
from serving.privacy import pseudonym_key
from serving.recommender import Recommender
from serving.redisstore import open_store
from serving.routes import router
from serving.settings import Settings
from serving.telemetry import BodyLimitMiddleware, TelemetryMiddleware

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 600.0


def open_live_service(settings: Settings) -> LiveService:
    """Bundle + store (seeded once from the bundle's histories) + replayed catalog changes. User ids are
    pseudonymised unless TWOTOWER_PSEUDONYM_KEY=off (a store of raw ids is re-keyed once); a state dir that
    cannot be written raises :class:`~serving.store.StoreUnavailable` naming the path."""
    rec = Recommender.load(settings.bundle, **settings.load_kwargs())
    store = open_store(  # TWOTOWER_STORE: SQLite in the state dir (default) or redis://host:port/db
        settings,
        max_events=settings.max_events_per_user or rec.max_len + 1,
        retention_s=settings.retention_days * 86_400.0,
        synchronous=settings.synchronous,
    )
    live = LiveService(rec, store, pseudonym_key=pseudonym_key(settings.state_dir, settings.pseudonym_key))
    store.adopt_key_scheme(live.key_scheme, live.user_key)
    if settings.seed_histories:
        seeded = store.seed(((live.user_key(u), e) for u, e in seed_rows(rec)), source=rec.model_version)
        if seeded:
            log.info("seeded the history store with %d events from the bundle", seeded)
    live.replayed = apply_catalog_changes(rec, store)  # added items this bundle cannot take are skipped
    store.sweep()
    return live


def create_app(settings: Settings | None = None, live: LiveService | None = None) -> FastAPI:
    """The app; ``live``: a service already opened (``python -m serving`` opens it first, so that a start-up
    error is one line naming the path), else the lifespan opens one from ``settings``."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = live if live is not None else await asyncio.to_thread(open_live_service, settings)
        app.state.live = service
        log.info("loaded bundle %s (%s), state in %s", settings.bundle, service.recommender.model_version,
                 settings.state_dir)  # fmt: skip
        loop = asyncio.get_running_loop()
        with contextlib.suppress(
            NotImplementedError, RuntimeError, ValueError
        ):  # not on every platform/thread
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_in_background(app)))
        sweeper = loop.create_task(sweep_forever(service))
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
    # one core is left to the event loop and to writes unless told otherwise
    app.state.gate = FairGate(settings.read_concurrency or max(1, (os.cpu_count() or 1) - 1))
    app.include_router(router)
    app.include_router(live_router)
    app.include_router(audience_router)  # POST /audiences
    mount_page(app)  # the demo page at /
    allow.install(app)  # 405: every method of the path (GET and DELETE /items/{id} live in two routers)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TelemetryMiddleware)
    app.add_middleware(RawPathRouting)
    errors.install(app)
    openapi.install(app, settings)
    return app


async def reload_in_background(app: FastAPI) -> None:
    """SIGHUP: reload the bundle now in use (the last one loaded, by start-up or /admin/reload); a failure is
    logged and the old bundle keeps serving."""
    live = app.state.live
    try:
        path = live.recommender.bundle.path
        await asyncio.to_thread(live.reload, path, **app.state.settings.load_kwargs())
    except Exception as exc:  # noqa: BLE001 - a bad bundle must not take the server down
        log.error("reload on SIGHUP failed; still serving %s: %s", live.recommender.model_version, exc)


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
