"""In-process recommender over a bundle: ONNX user tower + FAISS search with filters + popularity fallback.

No torch, Lightning or Hydra. Per-request work is single-threaded (ORT intra-op 1, FAISS omp 1). The
recommender holds its parts (the bundle, the :class:`~serving.catalog.Catalog` with the changes made since,
the ONNX sessions, the index and the session-intent re-rank); one :class:`RecommendationRequest` carries a
request through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from serving.catalog import Catalog
from serving.core.bundle import Bundle
from serving.core.diversify import request_seed
from serving.core.history import History, histories_from_frame
from serving.core.index import IndexSpec
from serving.core.intent import CategoryIntent, IntentSettings, item_members
from serving.core.listsettings import ListSettings
from serving.core.request import RecommendationRequest
from serving.core.resolve import resolve_entries
from serving.core.results import Recommendation, ResolvedHistory, merge_top
from serving.core.search import filtered_search
from serving.core.selector import Selector
from serving.core.signals import Signals
from serving.encoder import UserEncoder
from serving.shaping import ListShaper, Ranking

log = logging.getLogger(__name__)


class Recommender:
    """A bundle served in-process: encode a history (ONNX), search with filters (FAISS), fall back to popularity."""

    def __init__(
        self,
        bundle: Bundle,
        threads: int = 1,
        intent: IntentSettings | None = None,
        intent_boost: float | None = None,
        search: Mapping[str, int] | None = None,
        ranking: Mapping[str, float | int] | None = None,
    ) -> None:
        """``intent``: the session-intent re-rank's settings (default: the bundle's, else the library's);
        ``intent_boost`` replaces just their strength (0 = off); ``search``: search-time knobs replacing the
        bundle's (``nprobe``, ``ef_search``, ``k_factor``; see :meth:`set_search`); ``ranking``: list re-rank
        defaults replacing the bundle's (``diversity``, ``max_per_category``, ``calibrate``, ``explore``,
        ``depth``; see :mod:`serving.core.diversify`), which each request may override."""
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.model_version = str(self.manifest.get("model_version", "unknown"))
        self.max_len = int(self.manifest["max_len"])
        self.has_time = bool(self.manifest.get("has_time", True))
        self.catalog = Catalog(bundle.item_ids, bundle.categories, bundle.category_vectors,
                               bool(self.manifest["normalize"]))  # fmt: skip
        self.item_ids = self.catalog.item_ids  # bundle row -> external id
        self.event_of = {name: i for i, name in enumerate(self.manifest["events"])}
        self.vectors = bundle.item_vectors
        self.index = bundle.index
        self.spec = IndexSpec.from_dict(self.manifest["index"], strict=False).with_search(**(search or {}))
        self.threads = threads
        faiss.omp_set_num_threads(threads)
        counts = (
            bundle.items["train_count"].to_numpy()
            if "train_count" in bundle.items
            else np.zeros(len(self.item_ids))
        )
        self.popular_rows = np.argsort(-counts, kind="stable")
        self.popularity = counts.astype(np.float32)
        if intent is None:
            intent = IntentSettings.from_dict(self.manifest.get("rerank", {}).get("intent"))
        if intent_boost is not None:
            intent = replace(intent, boost=float(intent_boost))
        self.members = item_members(bundle.items, bundle.categories)  # (N, C) bool, or None
        self.intent = CategoryIntent.from_items(bundle.items, bundle.categories, intent)
        self.shaper = ListShaper(self.item_ids, self.catalog.row_of, self.vectors, self.members, counts)
        self.ranking = ListSettings.from_dict(self.manifest.get("rerank", {}).get("list")).with_overrides(
            **(ranking or {})
        )
        self._extended: np.ndarray | None = None
        # the bundle's stored histories (gaps computed over the whole log at training time)
        self.signals = Signals.from_manifest(self.manifest)  # queries, context, user features (if read)
        self.encoder = UserEncoder(bundle, self.signals, threads)
        self.user_features = self.signals.stored_features(bundle.users)  # user id -> (F,) indices
        self.histories = histories_from_frame(bundle.histories, self.catalog.row_of, self.event_of,
                                              self.signals.stored_arrays(bundle.histories))  # fmt: skip
        probe = self.encode(History.build(np.array([0])))
        if probe.shape != (bundle.dim,):
            raise ValueError(
                f"{bundle.onnx_path}: user vector has shape {probe.shape}, manifest dim is {bundle.dim}"
            )

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        threads: int = 1,
        verify: bool = True,
        intent: IntentSettings | None = None,
        intent_boost: float | None = None,
        search: Mapping[str, int] | None = None,
        ranking: Mapping[str, float | int] | None = None,
    ) -> Recommender:
        return cls(Bundle.load(bundle_dir, verify=verify), threads, intent, intent_boost, search, ranking)

    def set_search(self, **params: int) -> IndexSpec:
        """Change search-time knobs (``nprobe``, ``ef_search``, ``k_factor``) without rebuilding the index: the
        spec is replaced whole, so a request in flight keeps the one it started with. Bad names or values raise
        ValueError (see :meth:`IndexSpec.with_search`)."""
        self.spec = self.spec.with_search(**params)
        return self.spec

    # ---- encoding -------------------------------------------------------------------------------------
    def resolve(
        self,
        items: Sequence[str],
        events: Sequence[str] | None = None,
        dwell: Sequence[float | None] | None = None,
        ts: Sequence[float] | None = None,
        previous_ts: float | None = None,
    ) -> ResolvedHistory:
        """External ids (oldest first) -> model inputs against this catalog (:func:`serving.core.resolve.resolve_history`).

        An entry ``{"query": text}`` is a search: the model reads its tokens at the last known item before it
        (:mod:`serving.core.signals`); ``events``, ``dwell`` and ``ts`` have a value per entry, searches included.
        ``previous_ts``: time of the event just before these (for the first gap when extending a history)."""
        return resolve_entries(items, events, dwell, ts, previous_ts, signals=self.signals,
                               row_of=self.catalog.row_of, event_of=self.event_of,
                               live_ids=self.catalog.changes.known, has_time=self.has_time)  # fmt: skip

    def encode(
        self,
        history: History,
        padded_graph: bool = False,
        features: np.ndarray | None = None,
        context: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        """(D,) float32 user vector (:meth:`serving.encoder.UserEncoder.encode`; ``padded_graph``: the twin)."""
        return self.encoder.encode(history, padded_graph, features, context)

    def encode_ids(
        self,
        items: Sequence[str],
        events: Sequence[str] | None = None,
        dwell: Sequence[float | None] | None = None,
        ts: Sequence[float] | None = None,
    ) -> np.ndarray:
        """(D,) float32 user vector of a raw history (external item ids, oldest first)."""
        history = self.resolve(items, events, dwell, ts).history
        if not len(history.rows):
            raise ValueError("no known item in the history")
        return self.encode(history)

    # ---- retrieval ------------------------------------------------------------------------------------
    @property
    def extended_vectors(self) -> np.ndarray:
        """(N, D + C) item vectors followed by their category membership (the session-intent re-rank as one
        inner product, see :mod:`serving.core.intent`); made on first use."""
        if self._extended is None:
            members = self.intent.members.astype(np.float32)
            self._extended = np.ascontiguousarray(np.hstack([self.vectors, members]))
        return self._extended

    def search(self, query: np.ndarray, k: int, selector: Selector) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) passing the selector (see :func:`serving.core.search.filtered_search`)."""
        return filtered_search(self.index, self.spec, self.vectors, query, k, selector)

    def recommend(self, request: RecommendationRequest | None = None, /, **fields) -> Recommendation:
        """Top-k items for a user or a history, with how they were made.

        Args:
            request: the whole request; or give its fields as keywords (``user_id``, ``history``, ``events``,
                ``dwell``, ``ts``, ``k``, ``exclude_seen``, ``exclude_items``, ``allow_items``, ``rerank``:
                see :class:`~serving.core.request.RecommendationRequest`). Keywords given beside a request
                replace its fields.

        Returns:
            A :class:`~serving.core.results.Recommendation`: ``items`` (``[{"item_id", "score"}]``, best first,
            exactly ``k`` whenever the filters leave ``k`` items), ``source`` ("model", or "popularity" for a
            user with no known history), ``unknown_items`` (history ids not in the catalog, ignored),
            ``history_length`` and ``intent`` (the categories the session-intent re-rank lifted).

        Raises:
            ValueError / TypeError: a malformed request (``k`` under 1, per-event lists of the wrong length).
        """
        request = RecommendationRequest.of(request, **fields)
        if request.history is not None:
            resolved = self.resolve(request.history, request.events, request.dwell, request.ts)
        else:
            stored = self.histories.get(str(request.user_id)) if request.user_id is not None else None
            resolved = ResolvedHistory(stored) if stored is not None else None
        return self.recommend_resolved(resolved, request, profile=request.history is None)

    def recommend_resolved(
        self, resolved: ResolvedHistory | None, request: RecommendationRequest, *, profile: bool = False
    ) -> Recommendation:
        """Top-k for a history already resolved against this catalog (None or empty: the popularity fallback);
        the request's ``history`` is not read. The real-time loop calls this with the user's stored history.

        ``profile``: a model that reads user features may take the ``user_id``'s stored ones (the bundle's
        users table) when the request gives none. Only a request for a stored user sets it: one that brings
        its own history reads nothing stored about anyone, and an erased user's profile is not used."""
        k, catalog = request.k, self.catalog
        settings = self.ranking.for_request(request)
        changes = catalog.changes  # one snapshot for the whole request
        exclude_ids = {str(i) for i in request.exclude_items} if request.exclude_items else set()
        exclude = catalog.rows_of(exclude_ids)
        if len(changes.removed_rows):
            exclude = np.concatenate([exclude, changes.removed_rows])
        allow_ids = None if request.allow_items is None else {str(i) for i in request.allow_items}
        allow = None if allow_ids is None else catalog.rows_of(allow_ids)
        unknown = resolved.unknown if resolved is not None else []
        stored = self.user_features if profile else {}
        features = self.signals.features_for(request.features, request.user_id, stored)
        if resolved is None and features is not None:  # features alone: the model's start token
            resolved = ResolvedHistory(History.build(np.zeros(0, np.int64)), unknown)
        if resolved is None or (not len(resolved.history) and features is None):  # nothing known
            items = self._popular(k, set(exclude.tolist()), allow)
            if request.explain:
                for item in items:
                    item["because"] = []  # nothing of theirs to name: the list is the popular one
            return Recommendation(items, "popularity", unknown, 0, model_version=self.model_version)
        user_history = resolved.history
        if request.exclude_seen:
            exclude = np.concatenate([exclude, user_history.rows]) if len(exclude) else user_history.rows
            exclude_ids = exclude_ids | resolved.live_seen
        query = self.encode(user_history, features=features, context=request.context)
        fetch = max(k, settings.depth) if settings.active else k  # the list re-rank chooses from more
        intent, lift, extra = self.intent if request.rerank else None, None, None
        if intent is not None:
            lift = intent.session_lift(user_history.rows)  # (C,) float32
            if not lift.any():  # the session looks like anyone's: the model's order stands
                lift = None
        with Selector(len(self.item_ids), exclude, allow, trusted=True) as selector:  # rows from the catalog
            if lift is None:
                scores, found = self.search(query, fetch, selector)
            elif self.spec.kind == "flat":  # exact: one product of the extended vectors, every item boosted
                extended_query = np.concatenate([query, intent.query_weights(lift)])  # (D + C,)
                scores, found = filtered_search(
                    self.index, self.spec, self.extended_vectors, extended_query, fetch, selector
                )
            else:  # approximate: the index's top depth, boosted
                scores, found = self.search(query, max(fetch, intent.settings.depth), selector)
                scores, found = intent.rerank_one(scores, found, lift, fetch)
        if lift is not None and changes.ids:
            extra = intent.member_boosts(lift[None], changes.members(len(catalog.category_of))[None])[0]
        ids, ranking, seed = self.item_ids, None, 0
        if settings.active:  # the list re-rank chooses k of the fetched candidates
            if settings.explore:
                seed = (
                    request.seed
                    if request.seed is not None
                    else request_seed(request.user_id, user_history.rows.tobytes())
                )
            ranking = Ranking(settings, seed if settings.explore else None)
        if settings.active and not changes.ids:
            items = self.shaper.shape_rows(scores, found, k, settings, user_history.rows, seed)
        else:
            items = [
                {"item_id": ids[r], "score": s} for r, s in zip(found.tolist(), scores.tolist(), strict=True)
            ]
            if changes.ids:
                items = merge_top(items, changes.top(query, fetch, exclude_ids, allow_ids, extra), fetch)
            if settings.active:
                items = self.shaper.shape_items(items, k, settings, user_history.rows, seed, changes)
        if request.explain:
            self.shaper.explain(items, user_history.rows, changes)
        source = "model" if len(user_history) else "features"
        return Recommendation(
            items, source, unknown, len(user_history), lift, intent, self.model_version, ranking
        )

    def _popular(self, k: int, exclude: set[int], allow: np.ndarray | None) -> list[dict]:
        """Fallback: most-interacted training items passing the filters (score = training count)."""
        allow = None if allow is None else set(allow.tolist())
        out = []
        for row in self.popular_rows:
            if row in exclude or (allow is not None and row not in allow):
                continue
            out.append({"item_id": self.item_ids[row], "score": float(self.popularity[row])})
            if len(out) == k:
                break
        return out

    def similar_items(self, item_id: str, k: int = 10) -> list[dict]:
        """Items whose vectors are closest to this item's (the item itself and removed items excluded)."""
        item_id, changes = str(item_id), self.catalog.changes
        row = self.catalog.row_of.get(item_id)
        if row is not None and row not in changes.removed:
            vector = self.vectors[row]
        elif item_id in changes.row_of:
            vector = changes.vectors[changes.row_of[item_id]]
        else:
            raise KeyError(f"unknown item {item_id!r}")
        exclude = np.concatenate([changes.removed_rows, [row] if row is not None else []]).astype(np.int64)
        with Selector(len(self.item_ids), exclude) as selector:
            scores, found = self.search(vector, k, selector)
        items = [
            {"item_id": self.item_ids[r], "score": s}
            for r, s in zip(found.tolist(), scores.tolist(), strict=True)
        ]
        return merge_top(items, changes.top(vector, k, {item_id}, None), k)
