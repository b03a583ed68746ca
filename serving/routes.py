"""HTTP endpoints over the in-process :class:`~serving.recommender.Recommender`.

``/recommend`` and ``/items/{id}/similar`` are plain ``def`` handlers: FastAPI runs them in its thread pool,
so the CPU work of a recommendation (ONNX Runtime and FAISS release the GIL) never holds the event loop that
accepts the next request, a write among them.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import serving.paths  # noqa: F401 - registers the {name:id} path convertor
from serving import itemtext
from serving.deps import CallerDep, GateDep, LiveDep, RecommenderDep, SettingsDep, too_large
from serving.fields import ID_MAX_LENGTH, UNICODE
from serving.live import LiveService
from serving.schemas import (
    Health,
    ItemInfo,
    ItemSearchResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    error_responses,
)
from serving.settings import READ
from serving.telemetry import REGISTRY

router = APIRouter()
PathId = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, description="Item id (URL-encoded).")]
MAX_SEARCH = 50


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    response_model_exclude_none=True,  # because, explore and ranking appear when asked for
    summary="Top-k items for a user or a history",
    description="By `history`: open to anyone. By `user_id` (a stored history): needs the read scope when "
    "tokens are configured.",
    responses=error_responses(401, 403, 413, 503),
)
def recommend(
    body: RecommendRequest, live: LiveDep, settings: SettingsDep, caller: CallerDep, gate: GateDep
) -> RecommendResponse:
    if body.history is None and body.user_id is not None:
        caller.need(READ)  # the answer depends on what is stored about the user
    if body.k > settings.max_k:
        raise too_large("body", "k", body.k, settings.max_k)
    if body.history is not None and len(body.history) > settings.max_history:
        raise too_large("body", "history", len(body.history), settings.max_history)
    for field in ("exclude_items", "allow_items"):
        values = getattr(body, field)
        if values is not None and len(values) > settings.max_filter_items:
            raise too_large("body", field, len(values), settings.max_filter_items)
    with gate.read():
        result = live.recommend(body.to_request())
    return RecommendResponse(
        items=result.items,
        model_version=result.model_version,  # of the bundle that answered, even if a reload came since
        source=result.source,
        intent=result.intent,
        unknown_items=result.unknown_items,
        ranking=result.ranking.as_dict() if result.ranking is not None else None,
    )


@router.get(
    "/items/{item_id:id}/similar",
    response_model=SimilarResponse,
    summary="Items closest to an item",
    description="Open: reads no personal data. An id holding `/` is sent URL-encoded (`%2F`).",
    responses=error_responses(404, 503),
)
def similar(
    item_id: PathId,
    rec: RecommenderDep,
    settings: SettingsDep,
    gate: GateDep,
    k: Annotated[int, Query(ge=1)] = 10,
) -> SimilarResponse:
    if k > settings.max_k:
        raise too_large("query", "k", k, settings.max_k)
    try:
        with gate.read():
            items = rec.similar_items(item_id, k)
    except KeyError:
        raise HTTPException(404, f"unknown item {item_id!r}") from None
    return SimilarResponse(item_id=item_id, items=items, model_version=rec.model_version)


@router.get(
    "/items/{item_id:id}",
    response_model=ItemInfo,
    summary="An item's title and categories",
    description="Open: reads no personal data. An id holding `/` is sent URL-encoded (`%2F`).",
    responses=error_responses(404, 503),
)
def item_info(item_id: PathId, rec: RecommenderDep) -> ItemInfo:
    found = itemtext.describe(rec, item_id)
    if found is None:
        raise HTTPException(404, f"unknown item {item_id!r}")
    return ItemInfo(**found.__dict__)


@router.get(
    "/items",
    response_model=ItemSearchResponse,
    summary="Search the catalog by title",
    description="Open: reads no personal data. Case-insensitive substring of the title (or the exact id).",
    responses=error_responses(503),
)
def search_items(
    rec: RecommenderDep,
    gate: GateDep,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Text the title holds."), UNICODE],
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH, description="At most this many items.")] = 10,
) -> ItemSearchResponse:
    with gate.read():
        found = itemtext.search(rec, q, limit)
    return ItemSearchResponse(query=q, items=[ItemInfo(**x.__dict__) for x in found])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: the bundle is loaded and the history store takes writes",
    responses={
        503: {"model": Health, "description": "`loading`, or `store not writable` (reads still work)"}
    },
)
async def readyz(request: Request, response: Response) -> Health:
    live = getattr(request.app.state, "live", None)
    if live is None:
        response.status_code = 503
        return Health(status="loading")
    version = live.recommender.model_version
    if not getattr(live, "writable", True) and not await _recovered(live):
        response.status_code = 503
        return Health(status="store not writable", model_version=version)
    return Health(status="ready", model_version=version)


async def _recovered(live: LiveService) -> bool:
    """Whether a store marked unwritable takes a write again (a one-row disk write, off the event loop), so
    readiness comes back without waiting for a client's write."""
    probe = getattr(live, "probe_writable", None)
    return probe is not None and await asyncio.to_thread(probe)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Open, or needing the read scope when TWOTOWER_METRICS_NEED_TOKEN is set.",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        **error_responses(401, 403),
    },
)
async def metrics(settings: SettingsDep, caller: CallerDep) -> Response:
    if settings.metrics_need_token:
        caller.need(READ)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
