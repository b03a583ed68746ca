"""The OpenAPI schema, made to tell the truth about what this server's settings allow.

FastAPI builds the schema from the route declarations; the limits that are settings (``k`` up to
TWOTOWER_MAX_K, history and filter lengths, batch size) and the access model (which operations need a token,
and that ``/recommend`` needs one only by ``user_id``) are known only when the app is created, so they are
written in here. ``tests/test_fuzz.py`` holds the server to this schema with schemathesis.
"""

from __future__ import annotations

from fastapi import FastAPI

from serving.live import OTHER_EVENT
from serving.recommender import Recommender
from serving.settings import Settings

SECURITY = [{"bearer": []}]
OPTIONAL_SECURITY = [{}, {"bearer": []}]  # OpenAPI's "no token, or a bearer token"


def install(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` with FastAPI's schema plus the settings' limits and security, and the serving
    bundle's vocabularies once it is loaded (rebuilt after a reload)."""
    build = app.openapi
    built_for: list[Recommender | None] = [None]

    def openapi() -> dict:
        live = getattr(app.state, "live", None)
        rec = live.recommender if live is not None else None
        if app.openapi_schema is None or built_for[0] is not rec:
            app.openapi_schema = None  # FastAPI's build returns its cached schema otherwise
            schema = build()
            write_limits(schema, settings)
            write_security(schema, settings)
            if rec is not None:
                write_vocabularies(schema, rec)
            built_for[0], app.openapi_schema = rec, schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def write_vocabularies(schema: dict, rec: Recommender) -> None:
    """The names the server checks against the bundle: categories of a new item, event types; and a few
    catalog ids as examples of what an event names."""
    models = schema["components"]["schemas"]
    categories = [name for name, row in rec.catalog.category_of.items() if row > 0]  # row 0: no category
    models["NewItem"]["properties"]["categories"]["items"]["enum"] = categories
    event = next(
        alt for alt in models["EventIn"]["properties"]["event"]["anyOf"] if alt.get("type") == "string"
    )
    event["enum"] = sorted(set(rec.event_of) | {OTHER_EVENT, "other"})
    models["EventIn"]["properties"]["item_id"]["examples"] = list(rec.item_ids[:3])


def _array(prop: dict) -> dict:
    """The array schema of a property, which may be ``anyOf: [array, null]``."""
    return next((alt for alt in prop.get("anyOf", [prop]) if alt.get("type") == "array"), prop)


def write_limits(schema: dict, settings: Settings) -> None:
    models = schema["components"]["schemas"]
    recommend = models["RecommendRequest"]["properties"]
    recommend["k"]["maximum"] = settings.max_k
    _array(recommend["history"])["maxItems"] = settings.max_history
    for name in ("exclude_items", "allow_items"):
        _array(recommend[name])["maxItems"] = settings.max_filter_items
    models["EventsRequest"]["properties"]["events"]["maxItems"] = settings.max_batch_events
    for parameter in schema["paths"]["/items/{item_id}/similar"]["get"]["parameters"]:
        if parameter["name"] == "k":
            parameter["schema"]["maximum"] = settings.max_k


def write_security(schema: dict, settings: Settings) -> None:
    """With no token configured nothing needs one; else each operation as its dependencies declare, with
    ``/recommend`` open to a request carrying its own history and ``/metrics`` as configured."""
    operations = [op for path in schema["paths"].values() for op in path.values()]
    if not settings.auth_enabled:
        for operation in operations:
            operation.pop("security", None)
        for code in ("401", "403"):
            for operation in operations:
                operation["responses"].pop(code, None)
        return
    schema["paths"]["/recommend"]["post"]["security"] = OPTIONAL_SECURITY
    metrics = schema["paths"]["/metrics"]["get"]
    if settings.metrics_need_token:
        metrics["security"] = SECURITY
    else:
        metrics.pop("security", None)
        for code in ("401", "403"):
            metrics["responses"].pop(code, None)
