"""Prometheus metrics (request counts, latency histograms by endpoint, errors) and the request-size cap."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "twotower_requests_total", "HTTP requests", ["endpoint", "method", "status"], registry=REGISTRY
)
ERRORS = Counter(
    "twotower_errors_total", "Responses with status >= 400", ["endpoint", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "twotower_request_seconds",
    "Request latency by endpoint",
    ["endpoint"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)


# Every label value comes from a fixed set, never from the client's text: each distinct value is a new series
# that every scrape carries from then on, so a client could grow memory and /metrics without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def endpoint_of(scope: Scope) -> str:
    """The route's template without convertors (``/items/{item_id}/similar``), or "unmatched" (any path no
    route matched, so unknown paths share one series)."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


def method_of(scope: Scope) -> str:
    """The request's method when it is a standard one, else "other" (a client may send any token)."""
    method = scope.get("method", "")
    return method if method in METHODS else "other"


class TelemetryMiddleware:
    """Counts and times every request under its route template (:func:`endpoint_of`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = endpoint_of(scope)
            REQUESTS.labels(endpoint, method_of(scope), str(status["code"])).inc()
            LATENCY.labels(endpoint).observe(time.perf_counter() - start)
            if status["code"] >= 400:
                ERRORS.labels(endpoint, str(status["code"])).inc()


class BodyLimitMiddleware:
    """Answers 413 when a request body is larger than ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = b'{"detail":"%s"}' % _TooLarge.message(self.max_bytes).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised from ``receive`` when a streamed (chunked) body passes the limit. An HTTP exception, so that
    FastAPI's body reader passes it on as it is (anything else it turns into a 400) and the app answers 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, self.message(max_bytes))

    @staticmethod
    def message(max_bytes: int) -> str:
        return f"request body larger than {max_bytes} bytes"
