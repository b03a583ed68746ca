"""Typed, documented request/response models (they make the OpenAPI page).

Every string a client sends must be valid Unicode (a lone surrogate such as ``"\\ud800"`` is refused with
422 naming the field: it could be neither stored nor written back as JSON), and every number finite.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, WithJsonSchema

from serving.core.request import RecommendationRequest
from serving.core.texthash import MAX_QUERY_CHARS
from serving.live import EventLimits

ID_MAX_LENGTH = 256
# integer ids: those a JSON number carries exactly everywhere (I-JSON, RFC 7493); larger ones go as strings
INT_ID_MIN, INT_ID_MAX = -(2**53 - 1), 2**53 - 1
MAX_DWELL_S = EventLimits().max_dwell_s


def _id_to_str(value: object) -> object:
    """Ids may be JSON strings or integers up to 2**53 - 1 (``7.0`` is the integer 7, as JSON Schema has it); booleans
    and fractional numbers are refused."""
    if isinstance(value, bool):
        raise ValueError("an id must be a string or an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if not INT_ID_MIN <= value <= INT_ID_MAX:
            raise ValueError(f"an integer id must be within +-{INT_ID_MAX} (send larger ids as strings)")
        return str(value)
    return value


def _unicode(value: str) -> str:
    """Refuse text that is not valid Unicode (lone surrogates): it cannot be stored or encoded as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates such as \\ud800)") from None
    return value


ID_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": ID_MAX_LENGTH},
        {"type": "integer", "minimum": INT_ID_MIN, "maximum": INT_ID_MAX},
    ]
}
Text = Annotated[str, AfterValidator(_unicode)]
Id = Annotated[
    str,
    BeforeValidator(_id_to_str),
    Field(min_length=1, max_length=ID_MAX_LENGTH),
    AfterValidator(_unicode),
    WithJsonSchema(ID_SCHEMA),
]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # a JSON number: not a boolean, not text


def _json_integer(value: object) -> object:
    """A JSON integer (``5`` or ``5.0``), not a boolean or a numeric string (pydantic's lax mode takes both)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
Share = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]  # a JSON number in [0, 1]


SignalText = Annotated[Text, Field(min_length=1, max_length=128)]  # a context or feature value


class SearchEntry(BaseModel):
    """A search in a history: read by the model when its bundle reads queries (ignored otherwise)."""

    model_config = ConfigDict(extra="forbid")

    query: Annotated[Text, Field(min_length=1, max_length=MAX_QUERY_CHARS)] = Field(
        description="What the user searched for (at least one word). Read by the position of the last known "
        "item before it; a search before any known item is not read."
    )


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
    history: list[Id | SearchEntry] | None = Field(
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


class EventIn(BaseModel):
    """One interaction."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="Who interacted (stored as a keyed hash when pseudonymisation is on).")
    item_id: Id | None = Field(
        None, description="With what: an item of the catalog (bundle or added since). Omitted for a search."
    )
    query: Annotated[Text, Field(min_length=1, max_length=MAX_QUERY_CHARS)] | None = Field(
        None, description="A search: what the user searched for (give it instead of `item_id`)."
    )
    event: Text | None = Field(
        None,
        max_length=64,
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
    categories: list[Annotated[Text, Field(max_length=256)]] = Field(
        min_length=1, max_length=64, description="Category names of the bundle."
    )


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[NewItem] = Field(min_length=1, max_length=10_000)


class ItemsResponse(BaseModel):
    items: list[str] = Field(description="Ids added, restored or removed.")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: Annotated[Text, Field(min_length=1, max_length=4096)] | None = Field(
        None,
        description="Bundle directory (relative paths are taken under TWOTOWER_BUNDLE_ROOT when it is set, "
        "and a path outside that root is refused); default: the bundle now in use.",
    )


class ReloadResponse(BaseModel):
    model_version: str
    bundle: str


ERRORS = {
    401: "No bearer token, and this operation needs one (only when tokens are configured).",
    403: "The token is wrong or does not hold the scope this operation needs.",
    404: "Unknown item.",
    409: "The item is already in the catalog.",
    413: "The request body (or the batch) is larger than the server allows.",
    503: "Not ready: the bundle is loading, or the history store cannot take writes now (retry later).",
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
