"""The FastAPI app: wires settings, the bundle (loaded in ``lifespan``), middleware and routes."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.recommender import Recommender
from serving.routes import router
from serving.settings import Settings
from serving.telemetry import BodyLimitMiddleware, TelemetryMiddleware

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.recommender = Recommender.load(
            settings.bundle, threads=settings.threads, verify=settings.verify
        )
        log.info("loaded bundle %s (%s)", settings.bundle, app.state.recommender.model_version)
        yield
        app.state.recommender = None

    app = FastAPI(
        title="twotower",
        summary="Two-tower retrieval: live-history user vectors (ONNX) + FAISS search",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.recommender = None
    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TelemetryMiddleware)
    return app
