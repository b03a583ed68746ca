"""Validation and encoding: raw string ids -> dense, time-sorted arrays with saved vocabularies."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from serving.core.texthash import QueryHashing
from twotower.data.schema import CATEGORIES, DWELL, EVENT, ITEM, TIME, TITLE, USER, EncodedLog, RawLog
from twotower.data.signals import attach_signals, split_searches

log = logging.getLogger(__name__)

OTHER_EVENT = "<other>"
PAD = "<pad>"


def encode_log(
    raw: RawLog,
    min_events: int = 3,
    drop_duplicates: bool = True,
    max_categories: int = 16,
    query_hashing: QueryHashing | None = None,
) -> EncodedLog:
    """Deduplicate, drop users with too few events (both counted), factorize ids, sort each user by time.

    Sorting is stable: events with equal timestamps keep their file order. Search rows (a query, no item)
    are not events: their queries are read by the item events before them (:mod:`twotower.data.signals`);
    ``min_events`` counts item events.
    """
    report = raw.report
    events, searches = split_searches(raw.events.reset_index(drop=True))
    report.rows_read = report.rows_read or len(events)
    if drop_duplicates:
        dup = events.duplicated(subset=[USER, ITEM, TIME], keep="first")
        report.duplicates_dropped = int(dup.sum())
        if report.duplicates_dropped:
            log.warning(
                "%s: dropped %d duplicate (user, item, time) rows", raw.name, report.duplicates_dropped
            )
            events = events.loc[~dup].reset_index(drop=True)
    counts = events.groupby(USER, sort=False)[ITEM].transform("size")
    short = counts < min_events
    report.short_users_dropped = int(events.loc[short, USER].nunique())
    report.short_user_events_dropped = int(short.sum())
    if report.short_users_dropped:
        log.warning(
            "%s: dropped %d users with fewer than %d events (%d events)",
            raw.name, report.short_users_dropped, min_events, report.short_user_events_dropped,
        )  # fmt: skip
        events = events.loc[~short].reset_index(drop=True)
    if events.empty:
        raise ValueError(f"{raw.name}: no user has at least {min_events} events after validation")

    user_idx, user_ids = pd.factorize(events[USER], sort=False)
    item_idx, item_ids = pd.factorize(events[ITEM], sort=False)
    order = np.lexsort((np.arange(len(events)), events[TIME].to_numpy(), user_idx))
    users = user_idx[order].astype(np.int64)
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.add.at(offsets, users + 1, 1)
    offsets = np.cumsum(offsets)

    event_names = [OTHER_EVENT]
    event_idx = np.zeros(len(events), dtype=np.int64)
    if EVENT in events.columns:
        present = events[EVENT].notna()
        names = sorted(events.loc[present, EVENT].astype(str).unique())
        event_names += names
        lookup = {n: i + 1 for i, n in enumerate(names)}
        event_idx = (
            events[EVENT].map(lambda e: lookup.get(str(e), 0) if pd.notna(e) else 0).to_numpy(np.int64)
        )
    dwell = (
        events[DWELL].to_numpy(np.float32)
        if DWELL in events.columns
        else np.full(len(events), -1.0, np.float32)
    )

    item_categories, category_names, titles = _item_features(raw, list(item_ids), max_categories)
    encoded = EncodedLog(
        name=raw.name,
        user_ids=[str(u) for u in user_ids],
        item_ids=[str(i) for i in item_ids],
        event_names=event_names,
        category_names=category_names,
        users=users,
        items=(item_idx[order] + 1).astype(np.int64),
        ts=events[TIME].to_numpy(np.float64)[order],
        events=event_idx[order],
        dwell=dwell[order],
        user_offsets=offsets,
        item_categories=item_categories,
        item_titles=titles,
        has_time=raw.has_time,
        report=report,
    )
    return attach_signals(encoded, events, order, searches, query_hashing, raw.users)


def _item_features(
    raw: RawLog, item_ids: list[str], max_categories: int
) -> tuple[np.ndarray, list[str], list | None]:
    """(n_items + 1, C) padded category indices in catalog order, category names, titles."""
    n = len(item_ids)
    if raw.items is None or raw.items.empty:
        return np.zeros((n + 1, 1), dtype=np.int64), [PAD], None
    table = raw.items.set_index(ITEM)
    known = pd.Index(item_ids).isin(table.index)
    raw.report.unknown_item_features = int((~known).sum())
    if raw.report.unknown_item_features:
        log.warning("%s: %d items have no row in the item table", raw.name, raw.report.unknown_item_features)
    cats = table[CATEGORIES].reindex(item_ids)
    names = sorted({c for row in cats.dropna() for c in row})
    lookup = {c: i + 1 for i, c in enumerate(names)}
    width = max(1, min(max_categories, max((len(r) for r in cats.dropna()), default=1)))
    matrix = np.zeros((n + 1, width), dtype=np.int64)
    for i, row in enumerate(cats):
        if isinstance(row, list):
            idx = [lookup[c] for c in row][:width]
            matrix[i + 1, : len(idx)] = idx
    titles = None
    if TITLE in table.columns:
        titles = ["" if pd.isna(t) else str(t) for t in table[TITLE].reindex(item_ids)]
    return matrix, [PAD, *names], titles
