"""In-process recommender over a bundle: ONNX user tower + FAISS search with filters + popularity fallback.

No torch, Lightning or Hydra. Per-request work is single-threaded (ORT intra-op 1, FAISS omp 1).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort

from serving.bundle import Bundle
from serving.history import History, time_gaps
from serving.index import IndexSpec, Selector, filtered_search

log = logging.getLogger(__name__)
_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False


@dataclass
class Recommendation:
    """What ``recommend_detailed`` returns: the items plus how they were made."""

    items: list[dict]
    source: str  # "model" or "popularity" (fallback for unknown users / empty histories)
    unknown_items: list[str] = field(default_factory=list)  # history ids not in the catalog (ignored)
    history_length: int = 0


class Recommender:
    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
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
        self.spec = IndexSpec(
            **{k: v for k, v in self.manifest["index"].items() if k in IndexSpec.__dataclass_fields__}
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(bundle.onnx_path), options, providers=["CPUExecutionProvider"]
        )
        faiss.omp_set_num_threads(threads)
        counts = (
            bundle.items["train_count"].to_numpy()
            if "train_count" in bundle.items
            else np.zeros(len(self.item_ids))
        )
        self.popular_rows = np.argsort(-counts, kind="stable")
        self.popularity = counts.astype(np.float32)
        self.histories = self._load_histories()
        probe = self.encode_rows(History.build(np.array([0])))
        if probe.shape != (bundle.dim,):
            raise ValueError(
                f"{bundle.onnx_path}: user vector has shape {probe.shape}, manifest dim is {bundle.dim}"
            )

    @classmethod
    def load(cls, bundle_dir: str | Path, threads: int = 1, verify: bool = True) -> Recommender:
        return cls(Bundle.load(bundle_dir, verify=verify), threads=threads)

    def _load_histories(self) -> dict[str, History]:
        """The bundle's stored histories (their gaps were computed over the whole log at training time)."""
        frame = self.bundle.histories
        if "gap_s" not in frame:
            frame = frame.assign(
                gap_s=time_gaps(frame["ts"].to_numpy(), _starts(frame["user_id"].to_numpy()))
            )
        rows = np.fromiter((self.row_of.get(i, -1) for i in frame["item_id"]), np.int64, len(frame))
        events = np.fromiter((self.event_of.get(e, 0) for e in frame["event"]), np.int64, len(frame))
        dwell, gaps = frame["dwell_s"].to_numpy(np.float32), frame["gap_s"].to_numpy(np.float32)
        out: dict[str, History] = {}
        users = frame["user_id"].astype(str).to_numpy()
        bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
        for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
            keep = slice(begin, end)
            known = rows[keep] >= 0
            out[users[begin]] = History(
                rows[keep][known], events[keep][known], dwell[keep][known], gaps[keep][known]
            )
        return out

    # ---- encoding -------------------------------------------------------------------------------------
    def to_history(
        self,
        items: Sequence[str],
        events: Sequence[str] | None = None,
        dwell: Sequence[float] | None = None,
        ts: Sequence[float] | None = None,
    ) -> tuple[History, list[str]]:
        """External ids -> catalog rows; unknown items are dropped and returned; unknown events map to 'other'."""
        n = len(items)
        for name, values in (("events", events), ("dwell", dwell), ("ts", ts)):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} items")
        rows = np.array([self.row_of.get(str(i), -1) for i in items], dtype=np.int64)
        known = rows >= 0
        unknown = [str(i) for i, k in zip(items, known, strict=True) if not k]
        ev = np.array([self.event_of.get(str(e), 0) for e in events], np.int64) if events else None
        times = np.asarray(ts, dtype=np.float64) if ts is not None and self.has_time else None
        gaps = time_gaps(times) if times is not None else None  # over the whole timeline, unknown items too
        history = History.build(rows, ev, None if dwell is None else np.asarray(dwell, np.float32), gaps=gaps)
        if not known.all():
            history = History(
                *(a[known] for a in (history.rows, history.events, history.dwell, history.gaps))
            )
        return history, unknown

    def encode_rows(self, history: History) -> np.ndarray:
        """(D,) float32 user vector from the last ``max_len`` events of a history."""
        return self.session.run(None, history.feeds(self.max_len))[0][0]

    def encode_history(self, items, events=None, dwell=None, ts=None) -> np.ndarray:
        """(D,) float32 user vector of a raw history (external item ids, oldest first)."""
        history, _ = self.to_history(items, events, dwell, ts)
        if not len(history.rows):
            raise ValueError("no known item in the history")
        return self.encode_rows(history)

    # ---- retrieval ------------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, selector: Selector) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) passing the selector (see :func:`serving.index.filtered_search`)."""
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
    ) -> Recommendation:
        if k < 1:
            raise ValueError("k must be at least 1")
        unknown: list[str] = []
        if history is not None:
            user_history, unknown = self.to_history(history, events, dwell, ts)
        else:
            user_history = self.histories.get(str(user_id)) if user_id is not None else None
        exclude = self.rows_of(exclude_items)
        allow = None if allow_items is None else self.rows_of(allow_items)
        if user_history is None or not len(user_history):
            return Recommendation(self._popular(k, set(exclude.tolist()), allow), "popularity", unknown, 0)
        if exclude_seen:
            exclude = np.concatenate([exclude, user_history.rows]) if len(exclude) else user_history.rows
        query = self.encode_rows(user_history)
        scores, found = self.search(query, k, Selector(len(self.item_ids), exclude, allow))
        ids = self.item_ids
        items = [
            {"item_id": ids[r], "score": s} for r, s in zip(found.tolist(), scores.tolist(), strict=True)
        ]
        return Recommendation(items, "model", unknown, len(user_history))

    def rows_of(self, item_ids: Iterable[str]) -> np.ndarray:
        """int64 catalog rows of the known ids among ``item_ids`` (unknown ids are skipped)."""
        if isinstance(item_ids, Sized) and len(item_ids) == 0:
            return _NO_ROWS
        row_of = self.row_of
        return np.fromiter((row_of[i] for i in map(str, item_ids) if i in row_of), np.int64)

    def recommend(
        self, user_id=None, history=None, k=10, exclude_seen=True, exclude_items=(), allow_items=None
    ):
        """Top-k ``[{"item_id", "score"}]``; exactly k whenever the filters leave k items."""
        return self.recommend_detailed(user_id, history, k, exclude_seen, exclude_items, allow_items).items

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
        """Items whose vectors are closest to this item's (the item itself excluded)."""
        row = self.row_of.get(str(item_id))
        if row is None:
            raise KeyError(f"unknown item {item_id!r}")
        scores, found = self.search(self.vectors[row], k, Selector(len(self.item_ids), [row]))
        return [{"item_id": self.item_ids[r], "score": float(s)} for r, s in zip(found, scores, strict=True)]


def _starts(users: np.ndarray) -> np.ndarray:
    """(E,) bool: the event is the first of its user's run in a user-grouped table."""
    return np.r_[True, users[1:] != users[:-1]]
