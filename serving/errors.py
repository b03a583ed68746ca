"""Exception handlers: a client's mistake is a JSON 4xx naming the field, a store that cannot be read or
written now a 503 saying which.

FastAPI's own 422 echoes the offending input, which may be a value JSON cannot carry (``NaN`` and
``Infinity``, which Python's JSON parser accepts, or a lone surrogate): encoding that answer failed, so the
client got a 500 and a reset connection. Here every error body is made JSON-safe first.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.core.texthash import QueryError
from serving.schemas import ENTRY_IS, ENTRY_TAGS
from serving.store import StoreUnavailable

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


def json_safe(value: object) -> object:
    """``value`` with every part JSON can carry as it is, non-finite floats as their JSON names ("NaN") and
    text that is not valid Unicode with its surrogates written out (``\\ud800``); anything else as text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(json_safe(str(k))): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return json_safe(str(value))


def untagged(error: dict) -> dict:
    """``error`` without the union member's tag pydantic puts in the loc of a history entry's error
    (``["body", "history", 0, "search", "x"]`` -> ``[..., 0, "x"]``): the loc names places in the body.
    A search with a field missing or one too many also says what an entry may be."""
    loc = list(error.get("loc", ()))
    for i in range(len(loc) - 2):
        if loc[i] == "history" and isinstance(loc[i + 1], int) and loc[i + 2] in ENTRY_TAGS:
            tag = loc.pop(i + 2)
            if tag == "search" and error.get("type") in ("extra_forbidden", "missing"):
                error = {**error, "msg": f"{error['msg']}; a history entry is {ENTRY_IS}"}
            return {**error, "loc": tuple(loc)}
    return error


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": json_safe([untagged(e) for e in exc.errors()])})


def unreadable_body(cause: BaseException) -> str:
    """Why FastAPI could not read a body as JSON (it answers a bare 400 "error parsing the body")."""
    if isinstance(cause, RecursionError):
        return "the body's JSON nests arrays or objects too deeply to be read"
    if isinstance(cause, UnicodeError):
        return "the body is not JSON text (UTF-8)"
    return f"the body cannot be read as JSON ({type(cause).__name__})"


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Our own errors, and FastAPI's 400 for a body it could not read as JSON (bytes that are not UTF-8,
    nesting too deep for the parser), which is answered like any other malformed body: 422 naming the body."""
    if exc.status_code == 400 and exc.__cause__ is not None:
        detail = [{"loc": ["body"], "msg": unreadable_body(exc.__cause__), "type": "json_invalid"}]
        return JSONResponse(status_code=422, content={"detail": detail})
    return JSONResponse(
        status_code=exc.status_code, content={"detail": json_safe(exc.detail)}, headers=exc.headers
    )


UNAVAILABLE = {  # what a 503 says, by what failed (StoreUnavailable.operation)
    "write": "history store cannot take writes now, nothing was stored",
    "read": "history store cannot be read now",
    "open": "history store cannot be opened now, nothing was read or stored",
}


async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    what = UNAVAILABLE.get(getattr(exc, "operation", "write"), UNAVAILABLE["write"])
    log.error("%s: %s", what, exc)
    return JSONResponse(
        status_code=503,
        content={"detail": f"{what}: {json_safe(str(exc))}"},
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def signal_error(request: Request, exc: QueryError) -> JSONResponse:
    """A query, context or user feature the model cannot read (the message names the field): 422."""
    detail = [{"loc": ["body"], "msg": json_safe(str(exc)), "type": "value_error"}]
    return JSONResponse(status_code=422, content={"detail": detail})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(QueryError, signal_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
