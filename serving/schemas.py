"""Request/response models of the read API (recommend, similar items, item search, health) and the error
responses every router documents: typed and documented, they make the OpenAPI page.

Field types (valid Unicode, finite numbers, ids) come from :mod:`serving.fields`; the write and admin API's
models are in :mod:`serving.live_schemas`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, GetJsonSchemaHandler, StrictBool, Tag

from serving.core.request import RecommendationRequest
from serving.core.texthash import MAX_QUERY_CHARS
from serving.fields import UNICODE, Id, JsonInt, Share, SignalText


class SearchEntry(BaseModel):
    """A search in a history: read by the model when its bundle reads queries (ignored otherwise)."""

    model_config = ConfigDict(extra="forbid")

    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS), UNICODE] = Field(
        description="What the user searched for (at least one word). Read by the position of the last known "
        "item before it; a search before any known item is not read."
    )


ENTRY_IS = 'an item id (a string or an integer) or a search ({"query": text})'
# the union members' tags: pydantic puts them in an error's loc, where serving.errors drops them
ENTRY_TAGS = ("id", "search")


def _entry_kind(value: object) -> str | None:
    """Which member of the union a history entry is; None (one error saying what an entry may be) for
    anything else, such as a boolean, a list, null or a fractional number."""
    if isinstance(value, dict | SearchEntry):
        return "search"
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return "id"
    if isinstance(value, float) and value.is_integer():  # 7.0 is the integer 7, as for any id
        return "id"
    return None


class _PlainUnionSchema:
    """The JSON schema of a history entry as before it was tagged: ``anyOf`` [string, integer, SearchEntry]
    (pydantic writes a tagged union as ``oneOf`` of the members; the tags only change the errors)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict:
        schema = handler(core_schema)
        members = schema.pop("oneOf", None)
        if members is None:
            return schema
        return {**schema, "anyOf": [alt for member in members for alt in member.get("anyOf", [member])]}


HistoryEntry = Annotated[
    Annotated[Id, Tag("id")] | Annotated[SearchEntry, Tag("search")],
    Discriminator(_entry_kind, custom_error_type="history_entry",
                  custom_error_message=f"a history entry is {ENTRY_IS}"),
    _PlainUnionSchema(),
]  # fmt: skip


class ErrorResponse(BaseModel):
    """An error that names no field (401, 403, 404, 409, 413, 503)."""

    detail: str


class RecommendRequest(BaseModel):
    """Recommend for a known user (stored history) or for a history given in the request."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id | None = Field(
        None,
        description="A user: their current stored history (training history + events posted since) is encoded. "
        "A user with nothing stored gets the popularity fallback. Reading a stored history needs a token with "
        "the read scope when tokens are configured; a request that carries its own `history` needs none.",
    )
    history: list[HistoryEntry] | None = Field(
        None,
        description='Item ids the user interacted with, oldest first, and searches (`{"query": "..."}`). '
        "Used instead of the stored history. "
        "Only the most recent `max_len` events (the model's window) are read; longer than the server's "
        "TWOTOWER_MAX_HISTORY is refused. Unknown ids are ignored and listed in `unknown_items`.",
    )
    k: JsonInt = Field(10, ge=1, description="How many items to return (1 .. TWOTOWER_MAX_K).")
    exclude_seen: StrictBool = Field(True, description="Leave out items already in the history.")
    exclude_items: list[Id] = Field(default_factory=list, description="Item ids never to return.")
    allow_items: list[Id] | None = Field(None, description="If given, only these item ids may be returned.")
    diversity: Share | None = Field(
        None,
        description="0..1: how much the list trades score for items unlike those above them (maximal marginal "
        "relevance on the item vectors). 0: off; omitted: the server's default.",
    )
    max_per_category: JsonInt | None = Field(
        None,
        ge=0,
        description="At most this many items of any one category. 0: no cap; omitted: the default.",
    )
    calibrate: Share | None = Field(
        None,
        description="0..1: how much the list's category mix is pulled toward the history's (Steck 2018). "
        "0: off; omitted: the default.",
    )
    explore: Share | None = Field(
        None,
        description="0..1: share of the slots given to items from outside the user's usual categories or the "
        "long tail (marked `explore: true`). 0: off; omitted: the default.",
    )
    seed: JsonInt | None = Field(
        None, ge=0, le=2**31 - 1,
        description="Exploration's seed; omitted: one derived from the request, so the same request gets the "
        "same list.",
    )  # fmt: skip
    explain: StrictBool = Field(
        False,
        description="Add `because` to each item: the user's recent history items most like it (never an "
        "item they did not interact with).",
    )

    context: dict[SignalText, SignalText] | None = Field(
        None,
        max_length=32,
        description='The current moment\'s context (e.g. `{"device": "mobile"}`) for a model that reads '
        "context: an unknown key is refused (422), an unknown value reads as unknown. Ignored otherwise.",
    )
    features: dict[SignalText, SignalText] | None = Field(
        None,
        max_length=32,
        description='The user\'s features (e.g. `{"age_group": "25-34"}`) for a model that reads them: '
        "they replace a stored user's, and without any history give a personal start instead of the "
        "popularity fallback (`source: features`). Unknown key: 422; unknown value: read as unknown.",
    )

    def to_request(self) -> RecommendationRequest:
        """The in-process request this body asks for."""
        history = None if self.history is None else [
            {"query": h.query} if isinstance(h, SearchEntry) else h for h in self.history
        ]  # fmt: skip
        return RecommendationRequest(user_id=self.user_id, history=history, k=self.k,
                                     context=self.context, features=self.features,
                                     exclude_seen=self.exclude_seen, exclude_items=self.exclude_items,
                                     allow_items=self.allow_items, diversity=self.diversity,
                                     max_per_category=self.max_per_category, calibrate=self.calibrate,
                                     explore=self.explore, seed=self.seed, explain=self.explain)  # fmt: skip


class ScoredItem(BaseModel):
    item_id: str = Field(description="External item id.")
    score: float = Field(
        description="Inner product of user and item vectors (popularity count in the fallback)."
    )
    because: list[str] | None = Field(
        None,
        description="With `explain`: the user's recent history items most like this one, closest first "
        "(empty in the popularity fallback).",
    )
    explore: bool | None = Field(
        None, description="With `explore` on: whether this item fills an exploration slot."
    )


class Ranking(BaseModel):
    diversity: float
    max_per_category: int
    calibrate: float
    explore: float
    depth: int = Field(description="Candidates the list was chosen from.")
    seed: int | None = Field(None, description="Exploration's seed (reproduces the list).")


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str = Field(description="The bundle's model version.")
    source: str = Field(description="'model'; 'features' for a user known by features alone; 'popularity' for "
                        "an unknown user or an empty history.")  # fmt: skip
    intent: dict[str, float] = Field(
        default_factory=dict,
        description="Why the list leans the way it does: categories the user's recent events are more about "
        "than anyone's, with their lift in [0, 1] (the session-intent re-rank); empty when it did not act.",
    )
    unknown_items: list[str] = Field(
        default_factory=list, description="History ids not in the catalog (ignored)."
    )
    ranking: Ranking | None = Field(
        None, description="The list re-rank's settings in force, when any knob was on (absent otherwise)."
    )


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str


class ItemInfo(BaseModel):
    """What the page shows about an item (no personal data)."""

    item_id: str
    title: str | None = Field(None, description="The bundle's title (none for items added since).")
    categories: list[str] = Field(default_factory=list, description="Category names.")
    popularity: int = Field(0, description="Interactions with the item in the training log.")


class ItemSearchResponse(BaseModel):
    query: str
    items: list[ItemInfo] = Field(description="Items now in the catalog whose title holds the query, most "
                                  "popular first.")  # fmt: skip


class Health(BaseModel):
    status: str
    model_version: str | None = None


ERRORS = {
    401: "No bearer token, and this operation needs one (only when tokens are configured).",
    403: "The token is wrong or does not hold the scope this operation needs.",
    404: "Unknown item.",
    409: "The item is already in the catalog.",
    413: "The request body (or the batch) is larger than the server allows.",
    503: "Not ready: the bundle is loading, or the history store cannot be read or written (retry later).",
}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entries for the error statuses an operation can answer (422 FastAPI adds)."""
    out: dict[int | str, dict] = {}
    for code in codes:
        out[code] = {"model": ErrorResponse, "description": ERRORS[code]}
        if code == 401:
            out[code]["headers"] = {
                "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}
            }
    return out
