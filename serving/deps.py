"""FastAPI dependencies: what a route needs (settings, the live service, its recommender, a token check),
declared once as ``Annotated`` types instead of each route reaching into ``app.state``."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from serving.live import LiveService
from serving.recommender import Recommender
from serving.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_live(request: Request) -> LiveService:
    """The real-time service; 503 until the bundle has loaded."""
    live = getattr(request.app.state, "live", None)
    if live is None:
        raise HTTPException(503, "bundle not loaded")
    return live


def get_recommender(live: Annotated[LiveService, Depends(get_live)]) -> Recommender:
    """The recommender now serving (read once per request: a reload swaps it for the next one)."""
    return live.recommender


SettingsDep = Annotated[Settings, Depends(get_settings)]
LiveDep = Annotated[LiveService, Depends(get_live)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]


def require_token(request: Request, settings: SettingsDep) -> None:
    """Bearer-token check (constant-time compare); open when no token is configured (loopback only)."""
    token = settings.api_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(403, "invalid token")


def too_large(location: str, field: str, given: int, limit: int) -> HTTPException:
    """422 naming the field whose size is over a server limit."""
    return HTTPException(422, [{"loc": [location, field], "msg": f"{given} given, at most {limit} allowed",
                                "type": "too_large"}])  # fmt: skip
