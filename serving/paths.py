"""Ids in paths: an id may hold any character, ``/`` included, so a path segment is routed as the client
encoded it.

Servers decode ``%2F`` to ``/`` before routing, which makes ``/users/team%2Falice/history`` look like a user
``team`` with a path ``alice/history``. :class:`RawPathRouting` routes on the raw path instead, decoding every
escape but ``%2F`` and ``%25`` (so ``/`` within a segment stays data and a literal ``%2F`` in an id, sent as
``%252F``, stays distinct), and the ``{name:id}`` convertor decodes those two inside the segment. Unencoded
``/`` separates segments, as in any URL: ``DELETE /users/x/history`` is not an erasure of ``x/history``.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send

_KEPT = re.compile(r"(%25|%2[fF])")


def route_path(raw_path: bytes) -> str:
    """The path to route on: ``raw_path`` decoded except for ``%2F`` and ``%25`` (written upper-case)."""
    pieces = _KEPT.split(raw_path.decode("utf-8", "replace"))
    return "".join(piece.upper() if i % 2 else unquote(piece) for i, piece in enumerate(pieces))


class IdConvertor(Convertor):
    """``{name:id}``: one path segment, with the ``%2F`` and ``%25`` that :func:`route_path` kept decoded."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return re.sub("%2F|%25", lambda m: "/" if m.group() == "%2F" else "%", value)

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


register_url_convertor("id", IdConvertor())


class RawPathRouting:
    """Replaces the decoded ``path`` of an HTTP request by :func:`route_path` of its ``raw_path``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%" in raw:
            scope = {**scope, "path": route_path(raw)}
        await self.app(scope, receive, send)
