"""Endpoints of the real-time loop: events, user data (read / erase), live catalog changes, hot reload.

Every endpoint here needs ``Authorization: Bearer <TWOTOWER_API_TOKEN>`` when that variable is set
(missing: 401, wrong: 403). They are plain ``def`` handlers: FastAPI runs them in its thread pool, so a
commit waiting on the disk never blocks the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from serving.catalog import ItemExists
from serving.core.bundle import BundleError
from serving.deps import LiveDep, SettingsDep, require_token
from serving.live import EventsRejected
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

router = APIRouter(dependencies=[Depends(require_token)])


@router.post(
    "/events", response_model=EventsResponse, summary="Store interactions (answers after the commit)"
)
def post_events(body: EventsRequest, live: LiveDep, settings: SettingsDep) -> EventsResponse:
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
def event_types(live: LiveDep) -> dict:
    return {"events": list(live.recommender.event_of)}


@router.get(
    "/users/{user_id}/history", response_model=UserHistoryResponse, summary="What is stored about a user"
)
def user_history(user_id: str, live: LiveDep) -> UserHistoryResponse:
    return UserHistoryResponse(user_id=user_id, events=live.user_events(user_id))


@router.delete(
    "/users/{user_id}", response_model=ErasedResponse, summary="Erase everything stored about a user"
)
def erase_user(user_id: str, live: LiveDep) -> ErasedResponse:
    return ErasedResponse(user_id=user_id, deleted=live.erase(user_id))


@router.post("/items", response_model=ItemsResponse, summary="Add items by their categories (no retraining)")
def add_items(body: ItemsRequest, live: LiveDep) -> ItemsResponse:
    try:
        added = live.add_items([(item.item_id, item.categories) for item in body.items])
    except ItemExists as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return ItemsResponse(items=added)


@router.delete("/items/{item_id}", response_model=ItemsResponse, summary="Take an item out of every answer")
def remove_item(item_id: str, live: LiveDep) -> ItemsResponse:
    try:
        return ItemsResponse(items=live.remove_items([item_id]))
    except KeyError:
        raise HTTPException(404, f"unknown item {item_id!r}") from None


@router.post("/admin/reload", response_model=ReloadResponse, summary="Swap to a new bundle atomically")
def reload(live: LiveDep, settings: SettingsDep, body: ReloadRequest | None = None) -> ReloadResponse:
    path = (body.bundle if body else None) or settings.bundle
    try:
        rec = live.reload(path, **settings.load_kwargs())
    except (BundleError, FileNotFoundError, ValueError) as exc:
        raise HTTPException(
            422, f"bundle {path!r} not loaded, still serving the previous one: {exc}"
        ) from None
    return ReloadResponse(model_version=rec.model_version, bundle=str(path))
