"""Audiences for campaigns: which stored users should see an item? No torch.

The question batch scoring answers turned around. Users' current histories are encoded in batch with the
batch-scoring path (:meth:`serving.batch.BatchScorer.encode`: the same ONNX graph, the same inputs, so
whatever the user tower reads reaches the audience too), their vectors go into an exact FAISS inner-product
index (``IndexFlatIP``: every user is scored, no approximation), and an item's vector is the query: its
audience is the ``k`` users whose vectors score highest against it, score = user vector . item vector, the
same number that ranks the item in that user's recommendations.

A set of items: each item gets its own ranking (rows ``item_id, rank, user_id, score``, rank 1-based per
item); nothing is merged across items, and a user may be in several items' audiences.

``exclude_seen`` (default on) leaves out users whose history holds the item, as a recommendation leaves out
items the user has seen. Users with no history the model can read (nothing stored, or only unknown items) have
no personal vector and are in no audience. Unknown or removed items raise :class:`UnknownItems` naming them.
Erasure: an index holds the users it was built from; the live service (:mod:`serving.audience_live`) checks
every user it returns against the store, so an erased user never appears.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from serving.batch import BatchScorer
from serving.core.history import History
from serving.core.results import ResolvedHistory
from serving.recommender import Recommender

log = logging.getLogger(__name__)
SCHEMA = pa.schema(
    [("item_id", pa.string()), ("rank", pa.int32()), ("user_id", pa.string()), ("score", pa.float32())]
)


class UnknownItems(KeyError):
    """Item ids that are not in the catalog now (never known, or taken down)."""

    def __init__(self, items: Sequence[str]) -> None:
        super().__init__(f"unknown items {list(items)} (not in the catalog)")
        self.items = list(items)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ItemQuery:
    """An item to find an audience for: its vector and who has already interacted with it."""

    item_id: str
    vector: np.ndarray  # (D,)
    seen_by: np.ndarray  # (S,) positions in the index of users whose history holds the item


@dataclass
class Audience:
    """One item's audience, best first."""

    item_id: str
    user_ids: list[str]
    scores: np.ndarray  # (n,) float32


@dataclass
class UserIndex:
    """Users' vectors in an exact inner-product index, with what each user has seen (for ``exclude_seen``)."""

    rec: Recommender  # the recommender the vectors were encoded with (a reload makes a new index)
    user_ids: list[str]
    vectors: np.ndarray  # (U, D) float32
    item_users: dict[int, np.ndarray]  # bundle row -> (S,) positions of users whose history holds it
    live_users: dict[str, np.ndarray]  # item added live -> (S,) positions of users who interacted with it
    index: faiss.Index
    versions: list[int | None] | None = None  # per user: the store's version the history was read at
    clock: int | None = None  # the store's write clock when the histories were read
    features: Mapping[str, np.ndarray] | None = None  # user id as indexed -> (F,) user-feature indices
    built_at: float = field(default_factory=time.monotonic)
    position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.position = {u: i for i, u in enumerate(self.user_ids)}

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.built_at

    @classmethod
    def build(
        cls,
        rec: Recommender,
        user_ids: Sequence[str],
        histories: Sequence[History | ResolvedHistory],
        versions: Sequence[int | None] | None = None,
        clock: int | None = None,
        batch: int = 128,
        features: Mapping[str, np.ndarray] | None = None,
    ) -> UserIndex:
        """Encode ``histories`` (the batch path) and index them; users with an empty history are left out.
        A model that reads user features gets each user's from ``features`` (user id as ``user_ids`` names it
        -> (F,) indices; default: the bundle's users table, by raw id), as batch scoring feeds them."""
        started = time.perf_counter()
        resolved = [
            h if isinstance(h, ResolvedHistory) else ResolvedHistory(h, n_events=len(h)) for h in histories
        ]
        keep = [i for i, h in enumerate(resolved) if len(h.history)]
        users = [str(user_ids[i]) for i in keep]
        kept = [resolved[i] for i in keep]
        table = rec.user_features if features is None else features
        feats = [table.get(u) for u in users] if table else None  # (F,) or None (unknown) per user
        vectors = BatchScorer(rec).encode([h.history for h in kept], batch=batch, features=feats)  # (U, D)
        index = faiss.IndexFlatIP(vectors.shape[1])
        if len(vectors):
            index.add(np.ascontiguousarray(vectors))
        item_users = _inverted([h.history.rows for h in kept])
        live: dict[str, list[int]] = {}
        for position, h in enumerate(kept):
            for item in h.live_seen:
                live.setdefault(item, []).append(position)
        log.info("audience index: %d of %d users encoded in %.2f s", len(users), len(user_ids),
                 time.perf_counter() - started)  # fmt: skip
        return cls(rec, users, vectors, item_users, {i: np.asarray(p, np.int64) for i, p in live.items()},
                   index, [versions[i] for i in keep] if versions is not None else None, clock, table)  # fmt: skip

    # ---- items ------------------------------------------------------------------------------------------
    def queries(self, item_ids: Sequence[str]) -> list[ItemQuery]:
        """The items as queries (duplicates answered once, in first-given order); raises :class:`UnknownItems`
        for ids not in the catalog now (never known or taken down)."""
        catalog = self.rec.catalog
        changes = catalog.changes  # one snapshot for the whole request
        ids = list(dict.fromkeys(str(i) for i in item_ids))
        unknown = [i for i in ids if i not in catalog]
        if unknown:
            raise UnknownItems(unknown)
        out = []
        for item in ids:
            row = catalog.row_of.get(item)
            if row is not None:
                out.append(ItemQuery(item, self.rec.vectors[row], self.item_users.get(row, _NONE)))
            else:  # added live: the item tower's category vector
                vector = changes.vectors[changes.row_of[item]]
                out.append(ItemQuery(item, vector, self.live_users.get(item, _NONE)))
        return out

    # ---- ranking ----------------------------------------------------------------------------------------
    def search(
        self, query: ItemQuery, fetch: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``fetch`` users for one item: (scores (n,), positions (n,)), best first, the users who
        have seen it left out when ``exclude_seen`` (exact: every user is scored)."""
        n = len(self)
        excluded = query.seen_by if exclude_seen else _NONE
        wanted = min(n, fetch + len(excluded))
        if wanted <= 0:
            return np.zeros(0, np.float32), _NONE
        scores, found = self.index.search(query.vector.reshape(1, -1).astype(np.float32), wanted)  # (1, w)
        scores, found = scores[0], found[0]
        keep = found >= 0
        if len(excluded):
            keep &= ~np.isin(found, excluded)
        return scores[keep][:fetch], found[keep][:fetch]

    def audiences(self, item_ids: Sequence[str], k: int, exclude_seen: bool = True) -> list[Audience]:
        """Each item's top-``k`` users (fewer when fewer users are left)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        out = []
        for query in self.queries(item_ids):
            scores, found = self.search(query, k, exclude_seen)
            out.append(Audience(query.item_id, [self.user_ids[p] for p in found], scores.astype(np.float32)))
        return out


def audience_table(audiences: Sequence[Audience], metadata: dict[str, str] | None = None) -> pa.Table:
    """Rows ``item_id, rank, user_id, score`` (rank 1-based within each item); ``metadata`` goes into the
    file's metadata as ``twotower.<key>``."""
    items = [a.item_id for a in audiences for _ in a.user_ids]
    ranks = [r for a in audiences for r in range(1, len(a.user_ids) + 1)]
    users = [u for a in audiences for u in a.user_ids]
    scores = np.concatenate([a.scores for a in audiences]) if audiences else np.zeros(0, np.float32)
    schema = SCHEMA.with_metadata({f"twotower.{k}": str(v) for k, v in (metadata or {}).items()})
    return pa.table(
        {"item_id": pa.array(items, pa.string()), "rank": pa.array(ranks, pa.int32()),
         "user_id": pa.array(users, pa.string()), "score": pa.array(scores, pa.float32())},
        schema=schema,
    )  # fmt: skip


def _inverted(rows: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Bundle row -> sorted positions of the users whose rows hold it (each user once per item)."""
    if not rows:
        return {}
    users = np.concatenate([np.full(len(r), i, np.int64) for i, r in enumerate(rows)])  # (E,)
    items = np.concatenate(rows).astype(np.int64)  # (E,)
    pairs = np.unique(items * len(rows) + users)  # one key per (item, user), sorted by item then user
    items, users = pairs // len(rows), pairs % len(rows)
    starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
    ends = np.r_[starts[1:], len(items)]
    return {int(items[s]): users[s:e] for s, e in zip(starts, ends, strict=True)}


_NONE = np.zeros(0, np.int64)
_NONE.flags.writeable = False


def write_audiences(index: UserIndex, item_ids: Sequence[str], k: int, out: str | Path,
                    exclude_seen: bool = True) -> dict:  # fmt: skip
    """Each item's audience into one Parquet file (temp file + rename: whole or absent); returns a summary."""
    started = time.perf_counter()
    found = index.audiences(item_ids, k, exclude_seen)
    meta = {"model_version": index.rec.model_version, "k": k, "users_indexed": len(index),
            "exclude_seen": exclude_seen}  # fmt: skip
    table = audience_table(found, meta)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return {**meta, "items": len(found), "rows": table.num_rows, "out": str(out),
            "rank_seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
