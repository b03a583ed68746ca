"""Validated field types of the HTTP request models (:mod:`serving.schemas`, :mod:`serving.live_schemas`).

Every string a client sends must be valid Unicode (a lone surrogate such as ``"\\ud800"`` is refused with
422 naming the field: it could be neither stored nor written back as JSON), and every number finite.

A length limit on text goes *before* the Unicode check (``Annotated[str, Field(max_length=...), UNICODE]``):
pydantic checks it on the string itself then, and its error counts characters. After a validator it falls
back to a generic check whose error counts "items".
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema

ID_MAX_LENGTH = 256
# integer ids: those a JSON number carries exactly everywhere (I-JSON, RFC 7493); larger ones go as strings
INT_ID_MIN, INT_ID_MAX = -(2**53 - 1), 2**53 - 1


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


def _unicode(value: object) -> object:
    """Refuse text that is not valid Unicode (lone surrogates): it cannot be stored or encoded as UTF-8.
    Runs before the string schema (whose own error for it, "unable to parse raw data", names no cause)."""
    if isinstance(value, str):
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
UNICODE = BeforeValidator(_unicode)
Text = Annotated[str, UNICODE]  # no length limit; a limited one: Annotated[str, Field(...), UNICODE]
Id = Annotated[
    str,
    Field(min_length=1, max_length=ID_MAX_LENGTH),  # first, so its errors count characters (see above)
    BeforeValidator(_id_to_str),
    UNICODE,  # runs first: before validators run last-declared first
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


SignalText = Annotated[str, Field(min_length=1, max_length=128), UNICODE]  # a context or feature value
