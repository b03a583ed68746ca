"""Request/response models of the write and admin API (:mod:`serving.live_routes`): events, stored
histories, erasure, catalog changes, reload. Field types come from :mod:`serving.fields`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from serving.core.texthash import MAX_QUERY_CHARS
from serving.fields import UNICODE, Finite, Id
from serving.live import EventLimits

MAX_DWELL_S = EventLimits().max_dwell_s


class EventIn(BaseModel):
    """One interaction."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="Who interacted (stored as a keyed hash when pseudonymisation is on).")
    item_id: Id | None = Field(
        None,
        description="With what: an item of the catalog (bundle or added since, taken down or not). Omitted for "
        "a search.",
    )
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS), UNICODE] | None = Field(
        None,
        description="A search: what the user searched for, given instead of `item_id` (both in one event: 422 "
        "naming `query`; send the search as its own event).",
    )
    event: Annotated[str, Field(max_length=64), UNICODE] | None = Field(
        None,
        description="Event type from the bundle's vocabulary (`GET /events/types`), or '<other>'. Default '<other>'.",
    )
    dwell_s: Finite | None = Field(
        None, ge=0, le=MAX_DWELL_S, description="Seconds spent, 0 .. 86400; bucketed as in training."
    )
    ts: Finite | None = Field(
        None,
        description="Unix seconds; default: arrival time. At most 300 s in the future, at most 10 years old.",
    )


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(
        min_length=1,
        description="One or many events; the batch is stored all or none (TWOTOWER_MAX_BATCH_EVENTS).",
    )


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events stored durably (the commit happened before this answer).")
    trimmed: int = Field(
        0,
        description="Valid events not kept: older than the newest TWOTOWER_MAX_EVENTS_PER_USER events the "
        "store keeps for their user. accepted + trimmed = the batch.",
    )


class StoredEventOut(BaseModel):
    item_id: str = Field(description="The item; empty for a search.")
    event: str
    dwell_s: float | None
    ts: float
    query: str | None = Field(None, description="A search's text (absent for an item event).")


class UserHistoryResponse(BaseModel):
    user_id: str
    events: list[StoredEventOut] = Field(description="Everything stored about the user, oldest first.")


class ErasedResponse(BaseModel):
    user_id: str
    deleted: int = Field(description="How many stored events were deleted.")


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: Id
    categories: list[Annotated[str, Field(max_length=256), UNICODE]] = Field(
        min_length=1, max_length=64, description="Category names of the bundle."
    )


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[NewItem] = Field(min_length=1, max_length=10_000)


class ItemsResponse(BaseModel):
    items: list[str] = Field(description="Ids added, restored or removed.")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: Annotated[str, Field(min_length=1, max_length=4096), UNICODE] | None = Field(
        None,
        description="Bundle directory (relative paths are taken under TWOTOWER_BUNDLE_ROOT when it is set, "
        "and a path outside that root is refused); default: the bundle now in use.",
    )


class ReloadResponse(BaseModel):
    model_version: str
    bundle: str
