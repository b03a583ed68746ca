"""HTTP endpoints over the in-process :class:`~serving.recommender.Recommender`."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.recommender import Recommender
from serving.schemas import Health, RecommendRequest, RecommendResponse, SimilarResponse
from serving.settings import Settings
from serving.telemetry import REGISTRY

router = APIRouter()


def _state(request: Request) -> tuple[Recommender, Settings]:
    rec = getattr(request.app.state, "recommender", None)
    if rec is None:
        raise HTTPException(503, "bundle not loaded")
    return rec, request.app.state.settings


def _too_many(field: str, given: int, limit: int) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", field], "msg": f"{given} given, at most {limit} allowed",
                                "type": "too_large"}])  # fmt: skip


@router.post("/recommend", response_model=RecommendResponse, summary="Top-k items for a user or a history")
async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
    rec, settings = _state(request)
    if body.k > settings.max_k:
        raise _too_many("k", body.k, settings.max_k)
    if body.history is not None and len(body.history) > settings.max_history:
        raise _too_many("history", len(body.history), settings.max_history)
    for field in ("exclude_items", "allow_items"):
        values = getattr(body, field)
        if values is not None and len(values) > settings.max_filter_items:
            raise _too_many(field, len(values), settings.max_filter_items)
    live = request.app.state.live
    result = live.recommend(
        user_id=body.user_id,
        history=body.history,
        k=body.k,
        exclude_seen=body.exclude_seen,
        exclude_items=body.exclude_items,
        allow_items=body.allow_items,
    )
    return RecommendResponse(
        items=result.items,
        model_version=rec.model_version,
        source=result.source,
        intent=result.intent,
        unknown_items=result.unknown_items,
    )


@router.get("/items/{item_id}/similar", response_model=SimilarResponse, summary="Items closest to an item")
async def similar(item_id: str, request: Request, k: int = Query(10, ge=1)) -> SimilarResponse:
    rec, settings = _state(request)
    if k > settings.max_k:
        raise HTTPException(
            422, [{"loc": ["query", "k"], "msg": f"at most {settings.max_k}", "type": "too_large"}]
        )
    try:
        items = rec.similar_items(item_id, k)
    except KeyError:
        raise HTTPException(404, f"unknown item {item_id!r}") from None
    return SimilarResponse(item_id=item_id, items=items, model_version=rec.model_version)


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Readiness: the bundle is loaded")
async def readyz(request: Request, response: Response) -> Health:
    rec = getattr(request.app.state, "recommender", None)
    if rec is None:
        response.status_code = 503
        return Health(status="loading")
    return Health(status="ready", model_version=rec.model_version)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
