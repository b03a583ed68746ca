"""HTTP endpoints over the in-process :class:`~serving.recommender.Recommender`."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.deps import LiveDep, RecommenderDep, SettingsDep, too_large
from serving.schemas import Health, RecommendRequest, RecommendResponse, SimilarResponse
from serving.telemetry import REGISTRY

router = APIRouter()


@router.post("/recommend", response_model=RecommendResponse, summary="Top-k items for a user or a history")
async def recommend(body: RecommendRequest, live: LiveDep, settings: SettingsDep) -> RecommendResponse:
    if body.k > settings.max_k:
        raise too_large("body", "k", body.k, settings.max_k)
    if body.history is not None and len(body.history) > settings.max_history:
        raise too_large("body", "history", len(body.history), settings.max_history)
    for field in ("exclude_items", "allow_items"):
        values = getattr(body, field)
        if values is not None and len(values) > settings.max_filter_items:
            raise too_large("body", field, len(values), settings.max_filter_items)
    result = live.recommend(body.to_request())
    return RecommendResponse(
        items=result.items,
        model_version=result.model_version,  # of the bundle that answered, even if a reload came since
        source=result.source,
        intent=result.intent,
        unknown_items=result.unknown_items,
    )


@router.get("/items/{item_id}/similar", response_model=SimilarResponse, summary="Items closest to an item")
async def similar(
    item_id: str, rec: RecommenderDep, settings: SettingsDep, k: int = Query(10, ge=1)
) -> SimilarResponse:
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
    live = getattr(request.app.state, "live", None)
    if live is None:
        response.status_code = 503
        return Health(status="loading")
    return Health(status="ready", model_version=live.recommender.model_version)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
