"""Batch scoring: top-k for many users at once, as the online path answers them. No torch.

Histories are encoded in right-padded ONNX batches of similar lengths (one single-threaded run per core at a
time) and searched in one FAISS call on all cores, filtered of the users' histories. The job around it (who
to score, chunks, shards, Parquet output, resuming) is :mod:`serving.batch_job`.

History exclusion in a batch: the search fetches ``k + overfetch`` candidates; a user with more than
``overfetch`` history items among them is searched again alone with their own selector, so everyone gets
exactly ``k`` (as the online path does). With the session-intent re-rank (:mod:`serving.core.intent`) on, users
whose recent history lifts a category get their top ``max(k, depth)`` re-ranked to k, as online.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from serving.core.diversify import request_seed
from serving.core.history import History
from serving.core.index import search_parameters
from serving.core.listsettings import ListSettings
from serving.core.search import exact_search
from serving.core.selector import Selector
from serving.recommender import Recommender

SCHEMA = pa.schema(
    [("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32())]
)


class BatchScorer:
    def __init__(
        self,
        rec: Recommender,
        k: int = 100,
        overfetch: int = 32,
        exclude_seen: bool = True,
        ranking: ListSettings | None = None,
        profiles: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``ranking``: the list re-rank's knobs (default: the recommender's, as online requests get them);
        ``profiles``: user id -> (F,) features for a model that reads them (default: the bundle's users table;
        :func:`serving.batch_job.profiles_for` leaves erased users out)."""
        self.rec, self.k, self.overfetch, self.exclude_seen = rec, k, overfetch, exclude_seen
        self.ranking = ranking if ranking is not None else rec.ranking
        self.profiles = rec.user_features if profiles is None else profiles

    def encode(
        self,
        histories: Sequence[History],
        batch: int = 128,
        features: Sequence[np.ndarray | None] | None = None,
    ) -> np.ndarray:
        """(B, D) user vectors: ONNX batches of ``batch`` rows, one per core at a time. ``features``: each row's
        (F,) user-feature indices (or None) when the model reads them (queries and context ride in the
        histories; :meth:`serving.core.signals.Signals.batch_feeds`).

        Histories are encoded in order of length, so each ONNX batch pads to a length close to its rows'
        (the vectors are the same: padding is masked), then put back in the callers' order. Small batches on
        single-threaded runs in parallel beat large ones spread over the cores (docs/benchmarks.md)."""
        rec = self.rec
        if not len(histories):
            return np.zeros((0, rec.bundle.dim), np.float32)
        lengths = np.fromiter((min(len(h), rec.max_len) for h in histories), np.int64, len(histories))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(histories), rec.bundle.dim), np.float32)

        def run(start: int) -> None:  # ONNX Runtime releases the GIL: runs overlap
            rows = order[start : start + batch]
            feats = None if features is None else [features[j] for j in rows]
            out[rows] = rec.encoder.encode_batch([histories[j] for j in rows], feats)

        starts = range(0, len(order), batch)
        if rec.threads <= 1 or len(starts) == 1:
            for start in starts:
                run(start)
        else:
            with ThreadPoolExecutor(rec.threads) as pool:
                list(pool.map(run, starts))  # list(): an error in any run is raised here
        return out

    def top_k(
        self, histories: Sequence[History], users: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) scores and catalog rows (-1 where fewer than k items remain), history excluded; with the
        list re-rank on, each user's list is chosen as online (``users`` seed exploration as online does)."""
        rec, k = self.rec, self.k
        scores, rows = _no_results(len(histories), k)
        empty = [b for b, h in enumerate(histories) if not len(h)]
        if empty:  # no history: the popularity fallback, as online
            popular = rec.popular_rows[:k]
            scores[empty, : len(popular)], rows[empty, : len(popular)] = rec.popularity[popular], popular
        known = [b for b, h in enumerate(histories) if len(h)]
        feats = None  # stored users' features, for a model that reads them
        if users is not None and self.profiles:
            feats = [self.profiles.get(str(users[b])) for b in known]
        if known and not self.ranking.active:
            scores[known], rows[known] = self._model_top_k([histories[b] for b in known], k, feats)
        elif known:
            found_scores, found = self._model_top_k(
                [histories[b] for b in known], max(k, self.ranking.depth), feats
            )
            for b, row_scores, row_items in zip(known, found_scores, found, strict=True):
                valid = row_items >= 0
                row_scores, row_items = row_scores[valid], row_items[valid]
                user = users[b] if users is not None else None
                seed = request_seed(user, histories[b].rows.tobytes()) if self.ranking.explore else 0
                order, _ = rec.shaper.choose_rows(
                    row_scores, row_items, k, self.ranking, histories[b].rows, seed
                )
                scores[b, : len(order)], rows[b, : len(order)] = row_scores[order], row_items[order]
        return scores, rows

    def _model_top_k(
        self, histories: Sequence[History], k: int, features: Sequence[np.ndarray | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) model top-k, re-ranked by session intent where the user's recent history lifts a category
        (exact index: every item boosted in one product; approximate: the top ``depth`` boosted), as online."""
        intent, rec = self.rec.intent, self.rec
        queries = self.encode(histories, features=features)
        if intent is None:
            return self._search_top_k(histories, queries, k)
        lift = intent.history_lift([h.rows for h in histories])  # (B, C)
        lifted = lift.max(1) > 0
        scores, rows = _no_results(len(histories), k)
        plain = np.flatnonzero(~lifted)
        if len(plain):
            scores[plain], rows[plain] = self._search_top_k([histories[b] for b in plain], queries[plain], k)
        chosen = np.flatnonzero(lifted)
        if rec.spec.kind == "flat":
            extended = np.hstack([queries, intent.query_weights(lift)])  # (B, D + C)
            for start in range(0, len(chosen), 256):  # (256, N) scores at a time
                part = chosen[start : start + 256]
                seen = [histories[b].rows for b in part] if self.exclude_seen else None
                found_scores, found = exact_search(rec.extended_vectors, extended[part], k, exclude=seen)
                width = found.shape[1]  # k, or the catalog size when smaller
                scores[part, :width], rows[part, :width] = found_scores, found
        elif len(chosen):
            depth = max(k, intent.settings.depth)
            found_scores, found = self._search_top_k([histories[b] for b in chosen], queries[chosen], depth)
            scores[chosen], rows[chosen] = intent.rerank(found_scores, found, lift[chosen], k)
        return scores, rows

    def _search_top_k(
        self, histories: Sequence[History], queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) model scores and rows, history excluded (-inf / -1 where fewer remain)."""
        rec = self.rec
        fetch = min(len(rec.item_ids), k + (self.overfetch if self.exclude_seen else 0))
        found_scores, found = rec.index.search(queries, fetch, params=search_parameters(rec.index, rec.spec))
        keep = found >= 0  # (B, fetch)
        if self.exclude_seen:  # one sorted lookup for the whole batch: key = user * N + row
            n = len(rec.item_ids)
            seen = np.sort(np.concatenate([b * n + h.rows for b, h in enumerate(histories)]))  # (S,)
            # binary search of the candidates in the few seen keys (np.isin would sort them all)
            if len(seen):
                wanted = np.arange(len(histories))[:, None] * n + found  # (B, fetch)
                at = np.minimum(np.searchsorted(seen, wanted), len(seen) - 1)
                keep &= seen[at] != wanted
        rank = np.cumsum(keep, axis=1)  # (B, fetch): 1-based rank among the kept candidates
        take = keep & (rank <= k)
        scores, rows = _no_results(len(histories), k)
        user, slot = np.nonzero(take)
        scores[user, rank[user, slot] - 1], rows[user, rank[user, slot] - 1] = found_scores[take], found[take]
        short = np.flatnonzero((rank[:, -1] < k) & (fetch < len(rec.item_ids)))
        for b in short:  # more history than over-fetch among the candidates: this user alone, filtered search
            with Selector(len(rec.item_ids), histories[b].rows if self.exclude_seen else ()) as selector:
                s, r = rec.search(queries[b], k, selector)
            scores[b], rows[b] = -np.inf, -1
            scores[b, : len(r)], rows[b, : len(r)] = s, r
        return scores, rows

    def table(self, users: Sequence[str], histories: Sequence[History]) -> pa.Table:
        scores, rows = self.top_k(histories, users)
        valid = rows >= 0
        ids = np.asarray(self.rec.item_ids, dtype=object)
        return pa.table(
            {
                "user_id": pa.array(np.repeat(np.asarray(users, dtype=object), valid.sum(1)), pa.string()),
                "rank": pa.array((np.cumsum(valid, axis=1) - 1)[valid] + 1, pa.int32()),
                "item_id": pa.array(ids[rows[valid]], pa.string()),
                "score": pa.array(scores[valid], pa.float32()),
            },
            schema=SCHEMA,
        )


def _no_results(users: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, k) scores and rows holding nothing yet: -inf and -1."""
    return np.full((users, k), -np.inf, np.float32), np.full((users, k), -1, np.int64)
