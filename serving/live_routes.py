"""Endpoints of the real-time loop: events, user data (read / erase), live catalog changes, hot reload.

When a token is configured each endpoint here needs a scope (see :mod:`serving.deps` and SECURITY.md):
reading a user's history the read scope, events, catalog changes and erasure the write scope, reload the
admin scope; the event vocabulary is open. They are plain ``def`` handlers: FastAPI runs them in its thread
pool, so a commit waiting on the disk never blocks the event loop.

Path ids are one segment each, ``/`` sent as ``%2F`` (:mod:`serving.paths`): every id ``POST /events``
accepts can be read back and erased.
"""

from __future__ import annotations

import logging
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

import serving.paths  # noqa: F401 - registers the {name:id} path convertor
from serving.catalog import ItemExists
from serving.deps import GateDep, LiveDep, SettingsDep, invalid, require
from serving.fields import ID_MAX_LENGTH
from serving.live import EventsRejected, LiveService
from serving.live_schemas import (
    ErasedResponse,
    EventsRequest,
    EventsResponse,
    ItemsRequest,
    ItemsResponse,
    ReloadRequest,
    ReloadResponse,
    UserHistoryResponse,
)
from serving.schemas import error_responses
from serving.settings import ADMIN, READ, WRITE, Settings
from serving.store import StoreUnavailable

log = logging.getLogger(__name__)
router = APIRouter()
UserId = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, description="User id (URL-encoded).")]
ItemId = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, description="Item id (URL-encoded).")]


@router.post(
    "/events",
    response_model=EventsResponse,
    summary="Store interactions (answers after the commit)",
    description="Needs the write scope when tokens are configured.",
    dependencies=[require(WRITE)],
    responses=error_responses(401, 403, 413, 503),
)
def post_events(body: EventsRequest, live: LiveDep, settings: SettingsDep, gate: GateDep) -> EventsResponse:
    if len(body.events) > settings.max_batch_events:
        raise HTTPException(
            413, f"{len(body.events)} events in one batch, at most {settings.max_batch_events}"
        )
    try:
        with gate.write():
            done = live.ingest_report([e.model_dump() for e in body.events])
    except EventsRejected as exc:
        detail = [{"loc": ["body", "events", e.index, e.field], "msg": e.message, "type": "invalid_event"}
                  for e in exc.errors]  # fmt: skip
        raise HTTPException(422, detail) from None
    return EventsResponse(accepted=done.accepted, trimmed=done.trimmed)


@router.get(
    "/events/types",
    summary="Event types the model reads (others: '<other>')",
    description="Open: the bundle's vocabulary, no personal data.",
    responses=error_responses(503),
)
def event_types(live: LiveDep) -> dict[str, list[str]]:
    return {"events": list(live.recommender.event_of)}


@router.get(
    "/users/{user_id:id}/history",
    response_model=UserHistoryResponse,
    summary="What is stored about a user",
    description="Needs the read scope when tokens are configured. An id holding `/` is sent as `%2F`.",
    dependencies=[require(READ)],
    responses=error_responses(401, 403, 503),
)
def user_history(user_id: UserId, live: LiveDep) -> UserHistoryResponse:
    return UserHistoryResponse(user_id=user_id, events=live.user_events(user_id))


@router.delete(
    "/users/{user_id:id}",
    response_model=ErasedResponse,
    summary="Erase everything stored about a user",
    description="Needs the write scope when tokens are configured. An id holding `/` is sent as `%2F`.",
    dependencies=[require(WRITE)],
    responses=error_responses(401, 403, 503),
)
def erase_user(user_id: UserId, live: LiveDep, gate: GateDep) -> ErasedResponse:
    with gate.write():
        return ErasedResponse(user_id=user_id, deleted=live.erase(user_id))


@router.post(
    "/items",
    response_model=ItemsResponse,
    summary="Add items by their categories (no retraining)",
    description="Needs the write scope when tokens are configured. Durable before it is visible; all or none.",
    dependencies=[require(WRITE)],
    responses=error_responses(401, 403, 409, 413, 503),
)
def add_items(body: ItemsRequest, live: LiveDep, gate: GateDep) -> ItemsResponse:
    try:
        with gate.write():
            added = live.add_items([(item.item_id, item.categories) for item in body.items])
    except ItemExists as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:  # an unknown category or an id listed twice: the message names the item
        raise invalid(["body", "items"], str(exc)) from None
    return ItemsResponse(items=added)


@router.delete(
    "/items/{item_id:id}",
    response_model=ItemsResponse,
    summary="Take an item out of every answer",
    description="Needs the write scope when tokens are configured. An id holding `/` is sent as `%2F`.",
    dependencies=[require(WRITE)],
    responses=error_responses(401, 403, 404, 503),
)
def remove_item(item_id: ItemId, live: LiveDep, gate: GateDep) -> ItemsResponse:
    try:
        with gate.write():
            return ItemsResponse(items=live.remove_items([item_id]))
    except KeyError:
        raise HTTPException(404, f"unknown item {item_id!r}") from None


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    summary="Swap to a new bundle atomically",
    description="Needs the admin scope when tokens are configured. Any bundle that fails to load is 422 and "
    "the previous one keeps serving.",
    dependencies=[require(ADMIN)],
    responses=error_responses(401, 403, 413, 503),
)
def reload(live: LiveDep, settings: SettingsDep, body: ReloadRequest | None = None) -> ReloadResponse:
    path = bundle_path(settings, live, body.bundle if body else None)
    try:
        rec = live.reload(path, **settings.load_kwargs())
    except StoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the files, the client named them
        log.warning("reload of %s failed, still serving %s: %s", path, live.recommender.model_version, exc)
        raise invalid(["body", "bundle"], f"bundle {str(path)!r} not loaded, still serving the previous one: "
                      f"{type(exc).__name__}: {exc}", "bundle_invalid") from None  # fmt: skip
    return ReloadResponse(model_version=rec.model_version, bundle=str(path))


def bundle_path(settings: Settings, live: LiveService, given: str | None) -> FsPath:
    """The directory a reload loads: the bundle now in use by default; under TWOTOWER_BUNDLE_ROOT when set
    (relative paths are taken from there, symlinks resolved, and a path outside it is refused)."""
    if not given:
        return FsPath(live.recommender.bundle.path)
    if not settings.bundle_root:
        return FsPath(given)
    try:
        root = FsPath(settings.bundle_root).resolve()
        path = (root / given).resolve()
    except (OSError, ValueError) as exc:
        raise invalid(["body", "bundle"], f"not a usable path: {exc}") from None
    if not path.is_relative_to(root):
        raise invalid(["body", "bundle"], f"{given!r} is outside TWOTOWER_BUNDLE_ROOT", "outside_bundle_root")
    return path
