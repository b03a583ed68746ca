"""Typed, documented request/response models (they make the OpenAPI page)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


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

    user_id: Id | None = Field(None, description="A user of the bundle; its stored history is used.")
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


class ScoredItem(BaseModel):
    item_id: str = Field(description="External item id.")
    score: float = Field(
        description="Inner product of user and item vectors (popularity count in the fallback)."
    )


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str = Field(description="The bundle's model version.")
    source: str = Field(description="'model', or 'popularity' for an unknown user or an empty history.")
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
