"""405 answers that list every method of the path, not only those of the first route matching it.

Starlette answers a method a path lacks from the first route whose path matches, so ``GET /items/{id}``
(routes.py) beside ``DELETE /items/{id}`` (live_routes.py) would say ``Allow: GET`` alone; RFC 9110 wants
every method the resource supports.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed(request: Request) -> list[str]:
    """Every method some route of the app answers on this request's path (asked of each route as a request
    with that method would be: included routers are nested routes that match for their own)."""
    found = []
    for method in METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.routes):
            found.append(method)
    return found


async def method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
    methods = allowed(request)
    headers = {"Allow": ", ".join(methods)} if methods else dict(exc.headers or {})
    return JSONResponse(status_code=405, content={"detail": "Method Not Allowed"}, headers=headers)


def install(app: FastAPI) -> None:
    """Answer 405 with the union (a handler by status code goes before the app's HTTPException handler)."""
    app.add_exception_handler(405, method_not_allowed)
