"""The demo page at ``/``: static HTML/JS/CSS shipped inside the package (no build step, nothing from a CDN).

The page runs entirely on the public API (``/recommend``, ``/events``, ``/users/{id}``, ``/items``); the token
a person types stays in the page's memory. Its Content-Security-Policy lets it load only from this server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")  # fmt: skip


def mount_page(app: FastAPI) -> None:
    """Serve ``static/index.html`` at ``/`` and the files beside it under ``/static/``."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP,
                                                            "Cache-Control": "no-cache"})  # fmt: skip

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
