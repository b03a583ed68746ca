"""Typed, documented request/response models (they make the OpenAPI page)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from serving.core.request import RecommendationRequest


def _id_to_str(value: object) -> object:
    """Ids may be JSON strings or integers; booleans and floats are refused."""
    if isinstance(value, bool):
        raise ValueError("an id must be a string or an integer, not a boolean")
    if isinstance(value, int):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_id_to_str), Field(min_length=1, max_length=256)]


class RecommendRequest(BaseModel):
    """Recommend for a known user (stored history) or for a history given in the request."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id | None = Field(
        None,
        description="A user: their current stored history (training history + events posted since) is encoded. "
        "A user with nothing stored gets the popularity fallback.",
    )
    history: list[Id] | None = Field(
        None,
        description="Item ids the user interacted with, oldest first. Used instead of the stored history. "
        "Only the most recent `max_len` events (the model's window) are read; longer than the server's "
        "TWOTOWER_MAX_HISTORY is refused. Unknown ids are ignored and listed in `unknown_items`.",
    )
    k: int = Field(10, ge=1, description="How many items to return (1 .. TWOTOWER_MAX_K).")
    exclude_seen: bool = Field(True, description="Leave out items already in the history.")
    exclude_items: list[Id] = Field(default_factory=list, description="Item ids never to return.")
    allow_items: list[Id] | None = Field(None, description="If given, only these item ids may be returned.")

    def to_request(self) -> RecommendationRequest:
        """The in-process request this body asks for."""
        return RecommendationRequest(user_id=self.user_id, history=self.history, k=self.k,
                                     exclude_seen=self.exclude_seen, exclude_items=self.exclude_items,
                                     allow_items=self.allow_items)  # fmt: skip


class ScoredItem(BaseModel):
    item_id: str = Field(description="External item id.")
    score: float = Field(
        description="Inner product of user and item vectors (popularity count in the fallback)."
    )


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str = Field(description="The bundle's model version.")
    source: str = Field(description="'model', or 'popularity' for an unknown user or an empty history.")
    intent: dict[str, float] = Field(
        default_factory=dict,
        description="Why the list leans the way it does: categories the user's recent events are more about "
        "than anyone's, with their lift in [0, 1] (the session-intent re-rank); empty when it did not act.",
    )
    unknown_items: list[str] = Field(
        default_factory=list, description="History ids not in the catalog (ignored)."
    )


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str


class Health(BaseModel):
    status: str
    model_version: str | None = None


class EventIn(BaseModel):
    """One interaction."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="Who interacted (stored as a keyed hash when pseudonymisation is on).")
    item_id: Id = Field(description="With what: an item of the catalog (bundle or added since).")
    event: str | None = Field(
        None,
        max_length=64,
        description="Event type from the bundle's vocabulary (`GET /events/types`), or '<other>'. Default '<other>'.",
    )
    dwell_s: float | None = Field(None, description="Seconds spent, 0 .. 86400; bucketed as in training.")
    ts: float | None = Field(
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


class StoredEventOut(BaseModel):
    item_id: str
    event: str
    dwell_s: float | None
    ts: float


class UserHistoryResponse(BaseModel):
    user_id: str
    events: list[StoredEventOut] = Field(description="Everything stored about the user, oldest first.")


class ErasedResponse(BaseModel):
    user_id: str
    deleted: int = Field(description="How many stored events were deleted.")


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: Id
    categories: list[str] = Field(min_length=1, max_length=64, description="Category names of the bundle.")


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[NewItem] = Field(min_length=1, max_length=10_000)


class ItemsResponse(BaseModel):
    items: list[str] = Field(description="Ids added, restored or removed.")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str | None = Field(
        None, description="Bundle directory; default: the one the server was started with."
    )


class ReloadResponse(BaseModel):
    model_version: str
    bundle: str
