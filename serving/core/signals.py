"""The optional user-tower inputs at serving time: search queries, per-event context, static user features.

No torch. :class:`Signals` is read from a bundle's manifest (``model`` sizes and ``signals`` vocabularies) and
turns a request's strings into the indices training used:

- a history may hold searches (``{"query": "..."}`` entries beside item ids); each search is read by the
  position of the last catalog item before it (as in training, :mod:`twotower.data.signals`); searches
  before any known item are not read (counted in ``queries_unread``);
- ``context`` (a dict for the current moment) gives the context of the request's events that have none; an
  unknown *key* is refused (:class:`SignalError`, a 422 naming the field), an unknown *value* reads as the
  ``<unknown>`` bucket (index 0), as a value never seen in training does; ``hour_of_week`` comes from each
  event's time, never from the request;
- ``features`` (user features) likewise: unknown key refused, unknown value -> ``<unknown>``.

A bundle whose model reads none of them has an empty :class:`Signals`; its graphs take the four inputs only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.core.history import History, hour_of_week, padded_feeds
from serving.core.texthash import QueryError, QueryHashing, check_query, hash_query, merge_tokens

HOUR_OF_WEEK = "hour_of_week"
UNKNOWN_VALUE = "<unknown>"


class SignalError(QueryError):
    """A request's query, context or features cannot be read; the message names the field."""


def _lookup(vocab: Mapping[str, Sequence[str]]) -> dict[str, dict[str, int]]:
    return {name: {str(v): i for i, v in enumerate(values)} for name, values in vocab.items()}


@dataclass
class Signals:
    """What the bundle's user tower reads beyond items, events, dwell and gaps."""

    hashing: QueryHashing | None = None  # the model reads queries
    context: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> value -> index (K columns)
    features: dict[str, dict[str, int]] = field(default_factory=dict)  # feature -> value -> index (F)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Signals:
        model, vocab = manifest.get("model") or {}, manifest.get("signals") or {}
        hashing = None
        if model.get("query_buckets"):
            settings = dict(vocab.get("query_hashing") or {})
            hashing = QueryHashing(**{**settings, "buckets": int(model["query_buckets"]),
                                      "max_tokens": int(model.get("max_query_tokens", 32))})  # fmt: skip
        context = _lookup(vocab.get("context") or {}) if model.get("context_sizes") else {}
        features = _lookup(vocab.get("user_features") or {}) if model.get("user_feature_sizes") else {}
        return cls(hashing, context, features)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The graph's extra input names, in order."""
        return tuple(n for n, on in (("queries", self.hashing), ("context", self.context),
                                     ("user_features", self.features)) if on)  # fmt: skip

    @property
    def uses_start(self) -> bool:
        """User features alone give a vector (a start token opens every sequence)."""
        return bool(self.features)

    # ---- histories with searches --------------------------------------------------------------------
    def split_history(
        self, entries: Sequence[Any], is_known: Any
    ) -> tuple[list[int], list[Any], dict[int, list[str]], int]:
        """History entries (item ids and ``{"query": text}`` dicts) -> (positions of the item entries, their
        ids, {item number: its searches' texts}, searches not read). ``is_known(id)``: a catalog item, which a
        search can attach to. Bad queries raise :class:`SignalError` naming ``history[i].query``."""
        positions, ids, texts, unread, last_known = [], [], {}, 0, -1
        for i, entry in enumerate(entries):
            if type(entry) is not str and isinstance(entry, Mapping):  # str first: the common, fast case
                if set(entry) != {"query"}:
                    raise SignalError(
                        f"history[{i}]: a search is {{'query': text}}, got keys {sorted(entry)}"
                    )
                try:
                    text = check_query(entry["query"], f"history[{i}].query")
                except QueryError as exc:
                    raise SignalError(str(exc)) from None
                if last_known < 0 or self.hashing is None:
                    unread += 1
                else:
                    texts.setdefault(last_known, []).append(text)
                continue
            positions.append(i)
            ids.append(entry)
            if is_known(entry):
                last_known = len(ids) - 1
        return positions, ids, texts, unread

    def query_tokens(self, texts: Mapping[int, Sequence[str]], n: int) -> np.ndarray | None:
        """(n, T) tokens of each item position's searches (None when the model reads no query)."""
        if self.hashing is None:
            return None
        out = np.zeros((n, self.hashing.max_tokens), dtype=np.int64)
        for j, queries in texts.items():
            out[j] = merge_tokens([hash_query(q, self.hashing) for q in queries], self.hashing.max_tokens)
        return out

    # ---- context and features -----------------------------------------------------------------------
    def _check_keys(self, given: Mapping[str, Any] | None, known: Mapping[str, Any], what: str) -> None:
        for key in given or {}:
            if key not in known or (what == "context" and key == HOUR_OF_WEEK):
                allowed = sorted(k for k in known if not (what == "context" and k == HOUR_OF_WEEK))
                raise SignalError(f"{what}.{key}: unknown {what} key; this model reads {allowed}")

    def context_rows(
        self,
        n: int,
        context: Mapping[str, Any] | None = None,
        ts: np.ndarray | None = None,
        base: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """(n, K) context indices for ``n`` events sharing the request's ``context``; ``hour_of_week`` from the
        events' times ``ts`` (n,) (unknown without them). ``base`` (n, K): the events' own context, kept where
        the request says nothing. None when the model reads no context."""
        if not self.context:
            return None
        self._check_keys(context, self.context, "context")
        out = np.zeros((n, len(self.context)), dtype=np.int64) if base is None else base.copy()
        for k, (name, lookup) in enumerate(self.context.items()):
            if name == HOUR_OF_WEEK:
                if ts is not None and len(ts) == n and np.isfinite(np.asarray(ts, np.float64)).any():
                    out[:, k] = [lookup.get(str(h), 0) for h in hour_of_week(np.asarray(ts, np.float64))]
            elif context and name in context and context[name] is not None:
                out[:, k] = lookup.get(str(context[name]).strip(), 0)
        return out

    def feature_row(self, features: Mapping[str, Any] | None) -> np.ndarray | None:
        """(F,) user-feature indices (unknown values and missing features -> 0); None when the model reads none."""
        if not self.features:
            return None
        self._check_keys(features, self.features, "features")
        return np.array([lookup.get(str((features or {}).get(name)).strip(), 0) if (features or {}).get(name)
                         is not None else 0 for name, lookup in self.features.items()], dtype=np.int64)  # fmt: skip

    def features_for(
        self, given: Mapping[str, Any] | None, user_id: str | None, stored: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        """(F,) feature indices of a request: ``given`` (a request's features), else the stored user's; None when
        the model reads no feature or nothing is known (unknown feature names: :class:`SignalError`)."""
        if not self.features:
            return None
        if given is not None:
            return self.feature_row(given)
        return stored.get(str(user_id)) if user_id is not None else None

    def stored_features(self, frame: Any) -> dict[str, np.ndarray]:
        """users.parquet (``user_id`` + feature values) -> {user id: (F,) indices}."""
        if frame is None or not self.features:
            return {}
        columns = [frame[name].astype(str).to_numpy() if name in frame else None for name in self.features]
        out = {}
        for r, user in enumerate(frame["user_id"].astype(str)):
            out[user] = np.array([0 if c is None else lookup.get(c[r], 0)
                                  for c, lookup in zip(columns, self.features.values(), strict=True)], np.int64)  # fmt: skip
        return out

    def with_inputs(self, history: History, context: Mapping[str, Any] | None = None,
                    ts: np.ndarray | None = None) -> History:  # fmt: skip
        """``history`` with every input the graph needs: neutral query tokens and the request's context where the
        history carries none."""
        queries = history.queries
        if self.hashing is not None and queries is None:
            queries = np.zeros((len(history), self.hashing.max_tokens), dtype=np.int64)
        ctx = history.context
        if self.context and (ctx is None or context or ts is not None):
            ctx = self.context_rows(len(history), context, ts, ctx)
        return history.with_signals(queries, ctx)

    def feeds(self, history: History, max_len: int, features: np.ndarray | None) -> dict[str, np.ndarray]:
        """ONNX feeds (1, L, ...) of one history, with the user features (1, F) when the graph takes them."""
        out = history.feeds(max_len)
        if self.features:
            row = features if features is not None else np.zeros(len(self.features), np.int64)
            out["user_features"] = row[None, :]
        return out

    def features_only_feeds(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Feeds of a user with no event: one padding position, read by the start token alone."""
        out = History.build(np.array([-1])).feeds(1)  # items [[0]]: padding
        if self.hashing is not None:
            out["queries"] = np.zeros((1, 1, self.hashing.max_tokens), np.int64)
        if self.context:
            out["context"] = np.zeros((1, 1, len(self.context)), np.int64)
        out["user_features"] = features[None, :]
        return out

    def stored_arrays(self, frame: Any) -> dict[str, np.ndarray]:
        """histories.parquet's signal columns -> per-row ``queries`` (E, T) and ``context`` (E, K) arrays for
        :func:`serving.core.history.histories_from_frame` (columns a table lacks read as neutral)."""
        out: dict[str, np.ndarray] = {}
        n = len(frame)
        if self.hashing is not None:
            tokens = np.zeros((n, self.hashing.max_tokens), dtype=np.int64)
            if "queries" in frame:
                for r, texts in enumerate(frame["queries"]):
                    if texts is not None and len(texts):
                        tokens[r] = merge_tokens([hash_query(str(t), self.hashing) for t in texts],
                                                 self.hashing.max_tokens)  # fmt: skip
            out["queries"] = tokens
        if self.context:
            ctx = np.zeros((n, len(self.context)), dtype=np.int64)
            for k, (name, lookup) in enumerate(self.context.items()):
                column = "context:" + name
                if column in frame:
                    ctx[:, k] = [lookup.get(str(v), 0) for v in frame[column]]
            out["context"] = ctx
        return out

    def batch_feeds(
        self, histories: Sequence[History], max_len: int, features: Sequence[np.ndarray | None] | None = None
    ) -> dict[str, np.ndarray]:
        """(B, L, ...) right-padded feeds of many histories for the padded graph (``padded_feeds`` plus the
        signals the graph takes: neutral where a history carries none; ``features`` (F,) per row or None)."""
        if not self.inputs:
            return padded_feeds(histories, max_len)
        feeds = padded_feeds([self.with_inputs(h) for h in histories], max_len)
        if self.features:
            zero = np.zeros(len(self.features), np.int64)
            rows = features if features is not None else [None] * len(histories)
            feeds["user_features"] = np.stack([zero if f is None else f for f in rows])  # (B, F)
        return feeds
