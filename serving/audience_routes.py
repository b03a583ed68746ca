"""``POST /audiences``: which stored users should see these items (a campaign's audience).

It reveals who the store holds and what they are like, so it needs the read scope once tokens are configured
(see :mod:`serving.deps` and SECURITY.md). Users are named as the store holds them: keyed pseudonyms when
pseudonymisation is on (``user_ids: "keyed"``), never raw ids; an operator who holds the key maps a customer
list onto them with the same keyed hash. Bounded work: at most ``MAX_ITEMS`` items and ``k <= MAX_K`` per
request (422 naming the field past either). The user index is shared and refreshed as
:mod:`serving.audience_live` describes; a plain ``def`` handler, so encoding never blocks the event loop.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from serving.audience import UnknownItems
from serving.audience_live import LiveAudiences
from serving.deps import GateDep, LiveDep, require
from serving.fields import Id, JsonInt
from serving.privacy import RAW_SCHEME
from serving.schemas import error_responses
from serving.settings import READ

router = APIRouter()
MAX_ITEMS = 20  # items per request: each is one exact pass over the user vectors
MAX_K = 1000  # users per item: the answer holds at most MAX_ITEMS * MAX_K users
REFRESH_S = 60.0  # the user index is rebuilt (in the background) when older than this and the store changed


class AudienceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[Id] = Field(
        min_length=1, max_length=MAX_ITEMS,
        description=f"Item ids (1 .. {MAX_ITEMS}); each gets its own audience, duplicates are answered once.",
    )  # fmt: skip
    k: JsonInt = Field(100, ge=1, le=MAX_K, description=f"Users per item (1 .. {MAX_K}).")
    exclude_seen: StrictBool = Field(
        True, description="Leave out users who already interacted with the item."
    )


class AudienceMember(BaseModel):
    user_id: str = Field(description="The stored user id: a keyed pseudonym when pseudonymisation is on.")
    rank: int = Field(description="1-based, best first.")
    score: float = Field(description="Inner product of the user's current vector and the item's vector.")


class ItemAudience(BaseModel):
    item_id: str
    users: list[AudienceMember] = Field(description="Best first; fewer than k when fewer users are left.")


class AudienceResponse(BaseModel):
    audiences: list[ItemAudience] = Field(description="One per distinct item, in the order asked.")
    model_version: str
    user_ids: Literal["keyed", "raw"] = Field(
        description="'keyed': ids are HMAC-SHA256 pseudonyms (TWOTOWER_PSEUDONYM_KEY); 'raw': stored as given."
    )
    users_indexed: int = Field(description="Users with a history in the index answered from.")
    index_age_s: float = Field(description="Seconds since that index was built (rebuilt when stale).")


def get_audiences(request: Request) -> LiveAudiences:
    """The app's audience index holder, made on first use."""
    state = request.app.state
    holder = getattr(state, "audiences", None)
    if holder is None:
        holder = state.audiences = LiveAudiences(refresh_s=REFRESH_S)
    return holder


@router.post(
    "/audiences",
    response_model=AudienceResponse,
    summary="The stored users most likely to want each item (campaign audiences)",
    description="Needs the read scope when tokens are configured: it reveals stored users. User ids are keyed "
    "pseudonyms when pseudonymisation is on. Unknown or removed items: 404 naming them.",
    dependencies=[require(READ)],
    responses=error_responses(401, 403, 404, 413, 503),
)
def audiences(body: AudienceRequest, request: Request, live: LiveDep, gate: GateDep) -> AudienceResponse:
    holder = get_audiences(request)
    try:
        with gate.read():
            index, found = holder.audiences(live, body.items, body.k, body.exclude_seen)
    except UnknownItems as exc:
        raise HTTPException(404, str(exc)) from None
    return AudienceResponse(
        audiences=[
            ItemAudience(
                item_id=a.item_id,
                users=[
                    AudienceMember(user_id=u, rank=r, score=float(s))
                    for r, (u, s) in enumerate(zip(a.user_ids, a.scores, strict=True), 1)
                ],
            )
            for a in found
        ],  # fmt: skip
        model_version=index.rec.model_version,
        user_ids="raw" if live.key_scheme == RAW_SCHEME else "keyed",
        users_indexed=len(index),
        index_age_s=round(index.age_s, 3),
    )
