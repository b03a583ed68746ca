"""The optional signals of a log as model inputs: search queries, per-event context, static user features.

- Searches: a search row (a query, no item) is read by the position of the user's last item event before
  it, so the state there, which predicts the next item, has seen the search; a row with both an item and a
  query gives its query to the previous position too (the search that led to the item). Searches before a
  user's first item event have no position to read them and are dropped (counted in the load report). Only
  item events are positions and targets, so splits, targets and history exclusion are unchanged.
- Context: each ``context:<name>`` column -> indices into a sorted vocabulary, index 0 = ``<unknown>``.
- User features: the users table's columns -> indices, index 0 = ``<unknown>`` (also a user with no row).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pandas as pd

from serving.core.history import hour_of_week
from serving.core.texthash import QueryHashing, hash_queries, merge_tokens
from twotower.data.schema import CONTEXT_PREFIX, ITEM, QUERY, TIME, UNKNOWN_VALUE, USER, EncodedLog

log = logging.getLogger(__name__)

HOUR_OF_WEEK = "hour_of_week"  # the context column derived from the timestamp (serving derives it alike)


def split_searches(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(item rows, search-only rows) of a log; the second is None when the log has no query column."""
    if QUERY not in events.columns:
        return events, None
    search = events[ITEM].isna()
    return events.loc[~search].reset_index(drop=True), events.loc[search, [USER, TIME, QUERY]]


def vocabulary(values: pd.Series) -> tuple[list[str], np.ndarray]:
    """Sorted vocabulary (index 0 = unknown) and the (N,) indices of ``values`` (missing/empty -> 0)."""
    text = values.astype("string").str.strip()
    present = text.notna() & text.ne("")
    names = sorted(text[present].unique())
    lookup = {name: i + 1 for i, name in enumerate(names)}
    index = np.array([lookup.get(v, 0) if p else 0 for v, p in zip(text, present, strict=True)], np.int64)
    return [UNKNOWN_VALUE, *names], index


def attach_signals(
    data: EncodedLog,
    item_rows: pd.DataFrame,
    order: np.ndarray,
    searches: pd.DataFrame | None,
    hashing: QueryHashing | None = None,
    users: pd.DataFrame | None = None,
) -> EncodedLog:
    """Fill ``data``'s optional signal arrays. ``item_rows`` are the encoded rows in file order and ``order``
    the permutation that sorted them (sorted event j is row ``order[j]``)."""
    context_cols = [c for c in item_rows.columns if str(c).startswith(CONTEXT_PREFIX)]
    if context_cols:
        vocab, columns = {}, []
        for col in context_cols:
            names, index = vocabulary(item_rows[col])
            vocab[col[len(CONTEXT_PREFIX) :]] = names
            columns.append(index[order])
        data.context, data.context_vocab = np.stack(columns, 1), vocab  # (E, K)
    has_queries = searches is not None
    if has_queries:
        _attach_queries(data, item_rows, order, searches, hashing or QueryHashing())
    if users is not None:
        _attach_users(data, users)
    return data


def _attach_queries(
    data: EncodedLog,
    item_rows: pd.DataFrame,
    order: np.ndarray,
    searches: pd.DataFrame,
    hashing: QueryHashing,
) -> None:
    texts: dict[int, list[str]] = defaultdict(list)  # sorted event index -> its searches, oldest first
    starts = data.user_offsets[:-1]
    pending = []  # (position that reads it, time, text)
    # An item row's own query: read by the position before it (same user only).
    row_query = item_rows[QUERY].to_numpy(object)[order]
    for j in np.flatnonzero(pd.notna(row_query) & (pd.Series(row_query).astype(str).str.strip() != "")):
        if j > starts[data.users[j]]:
            pending.append((int(j) - 1, float(data.ts[j]), str(row_query[j])))
        else:
            data.report.searches_before_first_item += 1
    user_index = {u: i for i, u in enumerate(data.user_ids)}
    data.report.searches = len(searches)
    for user, ts, text in zip(searches[USER], searches[TIME], searches[QUERY], strict=True):
        u = user_index.get(str(user))
        if u is None or pd.isna(text) or not str(text).strip():
            continue  # the user was dropped (too few item events), or the row is empty
        begin, end = int(data.user_offsets[u]), int(data.user_offsets[u + 1])
        at = begin + int(np.searchsorted(data.ts[begin:end], ts, side="right")) - 1  # last item at or before
        if at < begin:
            data.report.searches_before_first_item += 1
        else:
            pending.append((at, float(ts), str(text)))
    for at, _, text in sorted(pending, key=lambda p: (p[0], p[1])):
        texts[at].append(text)
    if data.report.searches_before_first_item:
        log.warning("%s: %d searches come before the user's first item event and are dropped", data.name,
                    data.report.searches_before_first_item)  # fmt: skip
    queries = np.zeros((data.n_interactions, hashing.max_tokens), dtype=np.int64)  # (E, T)
    positions = sorted(texts)
    flat = [t for p in positions for t in texts[p]]
    hashed = hash_queries(flat, hashing)  # (S, T)
    cursor = 0
    for p in positions:
        n = len(texts[p])
        queries[p] = merge_tokens(hashed[cursor : cursor + n], hashing.max_tokens)
        cursor += n
    data.queries, data.query_hashing = queries, hashing.as_dict()
    data.query_texts = [texts.get(j, []) for j in range(data.n_interactions)]


def _attach_users(data: EncodedLog, users: pd.DataFrame) -> None:
    table = users.drop_duplicates(USER).set_index(USER).reindex(data.user_ids)
    vocab, columns = {}, []
    for col in table.columns:
        names, index = vocabulary(table[col])
        vocab[str(col)] = names
        columns.append(index)
    missing = int(table.isna().all(axis=1).sum())
    if missing:
        log.warning("%s: %d users have no row in the users table (their features read as unknown)", data.name,
                    missing)  # fmt: skip
    data.user_features = np.stack(columns, 1) if columns else np.zeros((data.n_users, 0), np.int64)  # (U, F)
    data.user_feature_vocab = vocab


def signal_sizes(data: EncodedLog, use_queries: bool = True, use_context: bool = True,
                 use_user_features: bool = True) -> dict:  # fmt: skip
    """The model-config sizes of the signals ``data`` carries (each off when its switch is)."""
    out: dict = {"query_buckets": 0, "context_sizes": (), "user_feature_sizes": ()}
    if use_queries and data.query_hashing is not None:
        out["query_buckets"] = int(data.query_hashing["buckets"])
        out["max_query_tokens"] = int(data.query_hashing["max_tokens"])
    if use_context and data.context_vocab:
        out["context_sizes"] = tuple(len(v) for v in data.context_vocab.values())
    if use_user_features and data.user_feature_vocab:
        out["user_feature_sizes"] = tuple(len(v) for v in data.user_feature_vocab.values())
    return out


def add_hour_of_week(events: pd.DataFrame) -> pd.DataFrame:
    """A ``context:hour_of_week`` column (0..167, Monday 00:00 UTC = 0) from the timestamp."""
    events[CONTEXT_PREFIX + HOUR_OF_WEEK] = [str(h) for h in hour_of_week(events[TIME].to_numpy(np.float64))]
    return events


def signal_vocab(data: EncodedLog) -> dict:
    """The vocabularies serving needs to map a request's strings to the indices training used (vocab.json,
    then the bundle manifest): query hashing settings, context and user-feature values (index 0 = unknown)."""
    return {
        "query_hashing": data.query_hashing,
        "context": data.context_vocab,
        "user_features": data.user_feature_vocab,
    }


def history_signal_columns(data: EncodedLog, rows: np.ndarray) -> dict[str, object]:
    """Extra histories.parquet columns for the events ``rows`` (E,) bool: ``queries`` (the search texts each
    position reads) and ``context:<name>`` (the context values, as strings)."""
    out: dict[str, object] = {}
    if data.query_texts is not None:
        out["queries"] = [list(t) for t, keep in zip(data.query_texts, rows, strict=True) if keep]
    for k, (name, values) in enumerate((data.context_vocab or {}).items()):
        out[CONTEXT_PREFIX + name] = np.asarray(values, dtype=object)[data.context[rows, k]]
    return out


def users_frame(data: EncodedLog) -> pd.DataFrame | None:
    """users.parquet: ``user_id`` + each feature's value (string; the unknown marker where missing)."""
    if data.user_feature_vocab is None:
        return None
    frame = pd.DataFrame({"user_id": data.user_ids})
    for f, (name, values) in enumerate(data.user_feature_vocab.items()):
        frame[name] = np.asarray(values, dtype=object)[data.user_features[:, f]]
    return frame
