"""Search-query text -> hashed token buckets: the one function training and serving both call.

A query is normalised (Unicode NFKC, case-folded), split into words (``\\w+``), and read as word unigrams,
word bigrams and character trigrams of each word (with ``<`` ``>`` word boundaries, so short words and
misspellings still share buckets). Every token is hashed with BLAKE2b of its UTF-8 bytes, never Python's
``hash()`` (salted per process), so a bucket is the same in every process and on every platform.

Buckets are ``1..buckets - 1``; 0 is padding. A query gives at most ``max_tokens`` buckets: unigrams first,
then bigrams, then character trigrams, in order, so truncation drops the least specific tokens first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from hashlib import blake2b

import numpy as np

HASH_VERSION = 1  # bump when any rule below changes: a bundle records the version it was trained with
MAX_QUERY_CHARS = 512  # longer queries are refused by serving (a 422 naming the field)
_WORD = re.compile(r"\w+")


class QueryError(ValueError):
    """A query that cannot be read (empty, no word, or too long); the message says which."""


@dataclass(frozen=True)
class QueryHashing:
    """The hashing settings a model was trained with (saved in the bundle manifest)."""

    buckets: int = 1 << 14
    max_tokens: int = 32
    char_ngram: int = 3
    version: int = HASH_VERSION

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def words(text: str) -> list[str]:
    """Normalised words of ``text`` (NFKC, case-folded)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def tokens(text: str, char_ngram: int = 3) -> list[str]:
    """The query's tokens in priority order: ``w:`` words, ``b:`` word bigrams, ``c:`` character n-grams."""
    ws = words(text)
    out = [f"w:{w}" for w in ws]
    out += [f"b:{a} {b}" for a, b in zip(ws, ws[1:], strict=False)]
    for w in ws:
        padded = f"<{w}>"
        out += [f"c:{padded[i : i + char_ngram]}" for i in range(max(1, len(padded) - char_ngram + 1))]
    return out


@lru_cache(maxsize=65536)
def bucket(token: str, buckets: int) -> int:
    """One token -> its bucket in ``1..buckets - 1`` (BLAKE2b of the UTF-8 bytes, first 8 bytes little-endian)."""
    digest = blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def hash_query(text: str, settings: QueryHashing = QueryHashing()) -> np.ndarray:
    """(max_tokens,) int64 buckets of one query, right-padded with 0 (serving's path; read-only, as repeated
    queries share one cached row)."""
    return _hash_query(text, settings)


@lru_cache(maxsize=16384)
def _hash_query(text: str, settings: QueryHashing) -> np.ndarray:
    out = np.zeros(settings.max_tokens, dtype=np.int64)
    found = [bucket(t, settings.buckets) for t in tokens(text, settings.char_ngram)[: settings.max_tokens]]
    out[: len(found)] = found
    out.flags.writeable = False
    return out


def hash_queries(texts: Iterable[str | None], settings: QueryHashing = QueryHashing()) -> np.ndarray:
    """(N, max_tokens) int64 buckets of many queries (training's path); None or empty text is all padding.

    Equal texts are hashed once (logs repeat their queries)."""
    texts = list(texts)
    out = np.zeros((len(texts), settings.max_tokens), dtype=np.int64)
    seen: dict[str, np.ndarray] = {}
    for i, text in enumerate(texts):
        if not text:
            continue
        row = seen.get(text)
        if row is None:
            row = seen[text] = hash_query(text, settings)
        out[i] = row
    return out


def check_query(text: object, field: str = "query") -> str:
    """A query serving accepts: a string with at least one word, at most :data:`MAX_QUERY_CHARS` characters.

    Raises :class:`QueryError` naming ``field`` otherwise."""
    if not isinstance(text, str):
        raise QueryError(f"{field}: a query must be a string, got {type(text).__name__}")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"{field}: query of {len(text)} characters; at most {MAX_QUERY_CHARS}")
    if not words(text):
        raise QueryError(f"{field}: empty query (no word in {text!r})")
    return text


def merge_tokens(rows: Iterable[np.ndarray], max_tokens: int) -> np.ndarray:
    """Several queries' buckets (each right-padded) -> one (max_tokens,) row: the newest query's tokens first,
    then older ones, truncated; what one history position reads when several searches precede the next item."""
    out = np.zeros(max_tokens, dtype=np.int64)
    fill = 0
    for row in reversed(list(rows)):
        real = row[row > 0][: max_tokens - fill]
        out[fill : fill + len(real)] = real
        fill += len(real)
        if fill >= max_tokens:
            break
    return out
