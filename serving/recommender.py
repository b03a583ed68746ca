"""In-process recommender over a bundle: ONNX user tower + FAISS search with filters + popularity fallback.

No torch, Lightning or Hydra. Per-request work is single-threaded (ORT intra-op 1, FAISS omp 1).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort

from serving.catalog import LiveCatalog, LiveItems
from serving.core.bundle import Bundle
from serving.core.history import History, histories_from_frame
from serving.core.index import IndexSpec, Selector
from serving.core.intent import CategoryIntent, IntentSettings
from serving.core.resolve import resolve_history
from serving.core.results import Recommendation, ResolvedHistory, merge_top
from serving.core.search import filtered_search

log = logging.getLogger(__name__)
_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False


class Recommender(LiveCatalog):
    """A bundle served in-process: encode a history (ONNX), search with filters (FAISS), fall back to popularity."""

    def __init__(
        self,
        bundle: Bundle,
        threads: int = 1,
        intent: IntentSettings | None = None,
        intent_boost: float | None = None,
        search: Mapping[str, int] | None = None,
    ) -> None:
        """``intent``: the session-intent re-rank's settings (default: the bundle's, else the library's);
        ``intent_boost`` replaces just their strength (0 = off); ``search``: search-time knobs replacing the
        bundle's (``nprobe``, ``ef_search``, ``k_factor``; see :meth:`set_search`)."""
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.model_version = str(self.manifest.get("model_version", "unknown"))
        self.max_len = int(self.manifest["max_len"])
        self.has_time = bool(self.manifest.get("has_time", True))
        self.item_ids = bundle.item_ids
        self.row_of = {item: i for i, item in enumerate(self.item_ids)}
        self.event_of = {name: i for i, name in enumerate(self.manifest["events"])}
        self.vectors = bundle.item_vectors
        self.index = bundle.index
        self.category_of = {name: i for i, name in enumerate(bundle.categories)}
        self.live = LiveItems(bundle.dim)  # items added / removed since the bundle (swapped, never mutated)
        self.spec = IndexSpec(
            **{k: v for k, v in self.manifest["index"].items() if k in IndexSpec.__dataclass_fields__}
        ).with_search(**(search or {}))
        self.threads = threads
        # batches of right-padded rows, one thread per run: serving.batch runs ``threads`` of them at a time
        self.session = _session(bundle.onnx_path, 1)
        unpadded = bundle.unpadded_onnx_path  # one history, no padding: fewer nodes, same vector
        self.single_session = _session(unpadded, threads) if unpadded is not None else self.session
        self._output = [self.session.get_outputs()[0].name]
        self._run_options = ort.RunOptions()  # reused: run() without one costs ~10 us per call
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
        self.intent = CategoryIntent.from_items(bundle.items, bundle.categories, intent)
        self._extended: np.ndarray | None = None
        # the bundle's stored histories (gaps computed over the whole log at training time)
        self.histories = histories_from_frame(bundle.histories, self.row_of, self.event_of)
        probe = self.encode_rows(History.build(np.array([0])))
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
    ) -> Recommender:
        return cls(Bundle.load(bundle_dir, verify=verify), threads, intent, intent_boost, search)

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

        ``previous_ts``: time of the event just before these (for the first gap when extending a history)."""
        return resolve_history(items, events, dwell, ts, previous_ts, row_of=self.row_of, event_of=self.event_of,
                               live_ids=self.live.row_of, has_time=self.has_time)  # fmt: skip

    def to_history(self, items, events=None, dwell=None, ts=None) -> tuple[History, list[str]]:
        """Model inputs and the ids that are not in the catalog."""
        resolved = self.resolve(items, events, dwell, ts)
        return resolved.history, resolved.unknown

    def encode_rows(self, history: History, padded_graph: bool = False) -> np.ndarray:
        """(D,) float32 user vector from the last ``max_len`` events of a history.

        Runs the bundle's unpadded graph when it has one; ``padded_graph=True`` runs the batch graph instead
        (its exact twin, for checking)."""
        session = self.session if padded_graph else self.single_session
        return session.run(self._output, history.feeds(self.max_len), self._run_options)[0][0]

    def encode_history(self, items, events=None, dwell=None, ts=None) -> np.ndarray:
        """(D,) float32 user vector of a raw history (external item ids, oldest first)."""
        history, _ = self.to_history(items, events, dwell, ts)
        if not len(history.rows):
            raise ValueError("no known item in the history")
        return self.encode_rows(history)

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

    def recommend_detailed(
        self,
        user_id: str | None = None,
        history: Sequence[str] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Iterable[str] = (),
        allow_items: Iterable[str] | None = None,
        events: Sequence[str] | None = None,
        dwell: Sequence[float] | None = None,
        ts: Sequence[float] | None = None,
        rerank: bool = True,
    ) -> Recommendation:
        if history is not None:
            resolved = self.resolve(history, events, dwell, ts)
        else:
            stored = self.histories.get(str(user_id)) if user_id is not None else None
            resolved = ResolvedHistory(stored) if stored is not None else None
        return self.recommend_resolved(resolved, k, exclude_seen, exclude_items, allow_items, rerank)

    def recommend_resolved(
        self,
        resolved: ResolvedHistory | None,
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Iterable[str] = (),
        allow_items: Iterable[str] | None = None,
        rerank: bool = True,
    ) -> Recommendation:
        """Top-k for a resolved history (None or empty: the popularity fallback).

        ``rerank=False`` skips the session-intent re-rank (:mod:`serving.core.intent`): the model's ranking alone."""
        if k < 1:
            raise ValueError("k must be at least 1")
        live = self.live  # one snapshot for the whole request
        exclude_ids = {str(i) for i in exclude_items} if exclude_items else set()
        exclude = self.rows_of(exclude_ids)
        if len(live.removed_rows):
            exclude = np.concatenate([exclude, live.removed_rows])
        allow_ids = None if allow_items is None else {str(i) for i in allow_items}
        allow = None if allow_ids is None else self.rows_of(allow_ids)
        unknown = resolved.unknown if resolved is not None else []
        if resolved is None or not len(resolved.history):
            return Recommendation(self._popular(k, set(exclude.tolist()), allow), "popularity", unknown, 0)
        user_history = resolved.history
        if exclude_seen:
            exclude = np.concatenate([exclude, user_history.rows]) if len(exclude) else user_history.rows
            exclude_ids = exclude_ids | resolved.live_seen
        query = self.encode_rows(user_history)
        intent, lift, extra = self.intent if rerank else None, None, None
        if intent is not None:
            lift = intent.session_lift(user_history.rows)  # (C,) float32
            if not lift.any():  # the session looks like anyone's: the model's order stands
                lift = None
        with Selector(len(self.item_ids), exclude, allow, trusted=True) as selector:  # rows from the catalog
            if lift is None:
                scores, found = self.search(query, k, selector)
            elif self.spec.kind == "flat":  # exact: one product of the extended vectors, every item boosted
                extended_query = np.concatenate([query, intent.query_weights(lift)])  # (D + C,)
                scores, found = filtered_search(
                    self.index, self.spec, self.extended_vectors, extended_query, k, selector
                )
            else:  # approximate: the index's top depth, boosted
                scores, found = self.search(query, max(k, intent.settings.depth), selector)
                scores, found = intent.rerank_one(scores, found, lift, k)
        if lift is not None and live.ids:
            extra = intent.member_boosts(lift[None], live.members(len(self.category_of))[None])[0]
        ids = self.item_ids
        items = [
            {"item_id": ids[r], "score": s} for r, s in zip(found.tolist(), scores.tolist(), strict=True)
        ]
        if live.ids:
            items = merge_top(items, live.top(query, k, exclude_ids, allow_ids, extra), k)
        return Recommendation(items, "model", unknown, len(user_history), lift, intent)

    def rows_of(self, item_ids: Iterable[str]) -> np.ndarray:
        """int64 catalog rows of the known ids among ``item_ids`` (unknown ids are skipped)."""
        if isinstance(item_ids, Sized) and len(item_ids) == 0:
            return _NO_ROWS
        row_of = self.row_of
        return np.fromiter((row_of[i] for i in map(str, item_ids) if i in row_of), np.int64)

    def recommend(
        self,
        user_id=None,
        history=None,
        k=10,
        exclude_seen=True,
        exclude_items=(),
        allow_items=None,
        rerank: bool = True,
    ):
        """Top-k ``[{"item_id", "score"}]``; exactly k whenever the filters leave k items."""
        return self.recommend_detailed(
            user_id, history, k, exclude_seen, exclude_items, allow_items, rerank=rerank
        ).items

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
        item_id, live = str(item_id), self.live
        row = self.row_of.get(item_id)
        if row is not None and row not in set(live.removed_rows.tolist()):
            vector = self.vectors[row]
        elif item_id in live.row_of:
            vector = live.vectors[live.row_of[item_id]]
        else:
            raise KeyError(f"unknown item {item_id!r}")
        exclude = np.concatenate([live.removed_rows, [row] if row is not None else []]).astype(np.int64)
        with Selector(len(self.item_ids), exclude) as selector:
            scores, found = self.search(vector, k, selector)
        items = [
            {"item_id": self.item_ids[r], "score": s}
            for r, s in zip(found.tolist(), scores.tolist(), strict=True)
        ]
        return merge_top(items, live.top(vector, k, {item_id}, None), k)


def _session(path: Path, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session running each call on ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
