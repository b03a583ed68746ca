"""Endpoints of the real-time loop: events, user data (read / erase), live catalog changes, hot reload.

Every endpoint here needs ``Authorization: Bearer <TWOTOWER_API_TOKEN>`` when that variable is set
(missing: 401, wrong: 403). They are plain ``def`` handlers: FastAPI runs them in its thread pool, so a
commit waiting on the disk never blocks the event loop.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, HTTPException, Request

from serving.core.bundle import BundleError
from serving.live import EventsRejected, LiveService
from serving.schemas import (
    ErasedResponse,
    EventsRequest,
    EventsResponse,
    ItemsRequest,
    ItemsResponse,
    ReloadRequest,
    ReloadResponse,
    UserHistoryResponse,
)


def _live(request: Request) -> LiveService:
    live = getattr(request.app.state, "live", None)
    if live is None:
        raise HTTPException(503, "bundle not loaded")
    return live


def require_token(request: Request) -> None:
    """Bearer-token check (constant-time compare); open when no token is configured (loopback only)."""
    token = request.app.state.settings.api_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(403, "invalid token")


router = APIRouter(dependencies=[Depends(require_token)])


@router.post(
    "/events", response_model=EventsResponse, summary="Store interactions (answers after the commit)"
)
def post_events(body: EventsRequest, request: Request) -> EventsResponse:
    live, settings = _live(request), request.app.state.settings
    if len(body.events) > settings.max_batch_events:
        raise HTTPException(
            413, f"{len(body.events)} events in one batch, at most {settings.max_batch_events}"
        )
    try:
        accepted = live.ingest([e.model_dump() for e in body.events])
    except EventsRejected as exc:
        detail = [{"loc": ["body", "events", e.index, e.field], "msg": e.message, "type": "invalid_event"}
                  for e in exc.errors]  # fmt: skip
        raise HTTPException(422, detail) from None
    return EventsResponse(accepted=accepted)


@router.get("/events/types", summary="Event types the model reads (others: '<other>')")
def event_types(request: Request) -> dict:
    return {"events": list(_live(request).recommender.event_of)}


@router.get(
    "/users/{user_id}/history", response_model=UserHistoryResponse, summary="What is stored about a user"
)
def user_history(user_id: str, request: Request) -> UserHistoryResponse:
    return UserHistoryResponse(user_id=user_id, events=_live(request).user_events(user_id))


@router.delete(
    "/users/{user_id}", response_model=ErasedResponse, summary="Erase everything stored about a user"
)
def erase_user(user_id: str, request: Request) -> ErasedResponse:
    return ErasedResponse(user_id=user_id, deleted=_live(request).erase(user_id))


@router.post("/items", response_model=ItemsResponse, summary="Add items by their categories (no retraining)")
def add_items(body: ItemsRequest, request: Request) -> ItemsResponse:
    live = _live(request)
    try:
        added = live.add_items([(item.item_id, item.categories) for item in body.items])
    except ValueError as exc:
        status = 409 if "already in the catalog" in str(exc) else 422
        raise HTTPException(status, str(exc)) from None
    return ItemsResponse(items=added)


@router.delete("/items/{item_id}", response_model=ItemsResponse, summary="Take an item out of every answer")
def remove_item(item_id: str, request: Request) -> ItemsResponse:
    try:
        return ItemsResponse(items=_live(request).remove_items([item_id]))
    except KeyError:
        raise HTTPException(404, f"unknown item {item_id!r}") from None


@router.post("/admin/reload", response_model=ReloadResponse, summary="Swap to a new bundle atomically")
def reload(request: Request, body: ReloadRequest | None = None) -> ReloadResponse:
    live, settings = _live(request), request.app.state.settings
    path = (body.bundle if body else None) or settings.bundle
    try:
        rec = live.reload(path, **settings.load_kwargs())
    except (BundleError, FileNotFoundError, ValueError) as exc:
        raise HTTPException(
            422, f"bundle {path!r} not loaded, still serving the previous one: {exc}"
        ) from None
    request.app.state.recommender = rec
    return ReloadResponse(model_version=rec.model_version, bundle=str(path))
