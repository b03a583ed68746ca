"""FastAPI dependencies: what a route needs (settings, the live service, its recommender, a scope check),
declared once as ``Annotated`` types instead of each route reaching into ``app.state``.

Access model: with no token configured every operation is open (the server then listens on loopback only).
Once any token is configured, an operation that reads a stored user's data needs the ``read`` scope, one that
changes stored data the ``write`` scope, ``/admin/*`` the ``admin`` scope (see SECURITY.md). A missing token
is 401 (with ``WWW-Authenticate: Bearer``), a wrong one or one without the scope 403.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.fairness import FairGate
from serving.live import LiveService
from serving.recommender import Recommender
from serving.settings import ADMIN, READ, WRITE, Settings

BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="`Authorization: Bearer <token>`: TWOTOWER_API_TOKEN (every scope) or a scoped token "
    "(TWOTOWER_READ_TOKEN, TWOTOWER_WRITE_TOKEN, TWOTOWER_ADMIN_TOKEN). Needed only when a token is configured.",
)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_live(request: Request) -> LiveService:
    """The real-time service; 503 until the bundle has loaded."""
    live = getattr(request.app.state, "live", None)
    if live is None:
        raise HTTPException(503, "bundle not loaded")
    return live


async def get_recommender(live: Annotated[LiveService, Depends(get_live)]) -> Recommender:
    """The recommender now serving (read once per request: a reload swaps it for the next one)."""
    return live.recommender


async def get_gate(request: Request) -> FairGate:
    """The gate that lets writes go before new recommendations (:mod:`serving.fairness`)."""
    return request.app.state.gate


SettingsDep = Annotated[Settings, Depends(get_settings)]
GateDep = Annotated[FairGate, Depends(get_gate)]
LiveDep = Annotated[LiveService, Depends(get_live)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]


@dataclass(frozen=True)
class Caller:
    """Who is asking: the scopes their token holds (all of them when no token is configured)."""

    scopes: frozenset[str]
    presented: bool
    auth_enabled: bool

    def need(self, scope: str) -> None:
        """Raise 401 (no token) or 403 (wrong token, or one without ``scope``) unless the caller holds it."""
        if not self.auth_enabled or scope in self.scopes:
            return
        if not self.presented:
            raise HTTPException(
                401, f"this operation needs a bearer token with the {scope} scope",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        raise HTTPException(403, f"the token does not hold the {scope} scope")


async def get_caller(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Caller:
    """The caller's scopes: the given token is compared with every configured one in constant time."""
    tokens = settings.tokens()
    if not tokens:
        return Caller(frozenset({READ, WRITE, ADMIN}), credentials is not None, False)
    if credentials is None:
        return Caller(frozenset(), False, True)
    given = credentials.credentials.strip().encode("utf-8", "surrogateescape")
    scopes: set[str] = set()
    for token, held in tokens:  # no early exit: the time taken does not tell which token matched
        if hmac.compare_digest(given, token.encode("utf-8", "surrogateescape")):
            scopes |= held
    return Caller(frozenset(scopes), True, True)


CallerDep = Annotated[Caller, Depends(get_caller)]


def require(scope: str):
    """A route dependency that needs ``scope`` (only when a token is configured)."""

    async def check(caller: CallerDep) -> None:
        caller.need(scope)

    check.__name__ = f"require_{scope}"
    return Depends(check)


def too_large(location: str, field: str, given: int, limit: int) -> HTTPException:
    """422 naming the field whose size is over a server limit."""
    return invalid([location, field], f"{given} given, at most {limit} allowed", "too_large")


def invalid(loc: list, message: str, kind: str = "value_error") -> HTTPException:
    """422 in the shape of FastAPI's own validation errors (a list of ``{loc, msg, type}``)."""
    return HTTPException(422, [{"loc": loc, "msg": message, "type": kind}])
