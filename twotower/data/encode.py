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
        # only identical events go: every column the event carries (a purchase and a view at the same time are
        # two events); without a time column ``ts`` is the row number, so it is left out of the key and only a
        # user's consecutive repeats go (a re-listen later on is an event, and the latest one is kept)
        key = [c for c in events.columns if c != TIME or raw.has_time]
        dup = events.duplicated(subset=key, keep="first") if raw.has_time else repeats(events, key)
        report.duplicates_dropped = int(dup.sum())
        if report.duplicates_dropped:
            log.warning(
                "%s: dropped %d duplicate rows (equal in %s)",
                raw.name,
                report.duplicates_dropped,
                ", ".join(key),
            )
            events = events.loc[~dup].reset_index(drop=True)
    if not raw.has_time:
        warn_if_sorted_by_item(raw.name, item_runs(pd.factorize(events[USER])[0], events[ITEM]))
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


def repeats(events: pd.DataFrame, key: list[str]) -> pd.Series:
    """(E,) bool: rows equal in ``key`` to their user's previous row in file order (a log without time)."""
    codes = np.stack([pd.factorize(events[c])[0] for c in key], axis=1)  # (E, K), missing -> -1
    users = codes[:, key.index(USER)]
    order = np.argsort(users, kind="stable")  # each user's rows in file order
    same = (codes[order][1:] == codes[order][:-1]).all(axis=1)  # (E - 1,) user is in the key
    dup = np.zeros(len(events), dtype=bool)
    dup[order[1:][same]] = True
    return pd.Series(dup, index=events.index)


def item_runs(users: np.ndarray, items: pd.Series) -> np.ndarray:
    """(3,) int64: users whose item ids change at least twice between consecutive rows, and of them those
    whose ids only rise and those whose ids only fall. ``users`` (E,) codes and ``items`` (E,) ids in file
    order; ids compare as numbers when all are numbers, else as strings."""
    text = items.astype(str)
    numbers = pd.to_numeric(text, errors="coerce")
    rank = pd.factorize(numbers if numbers.notna().all() else text, sort=True)[0]  # (E,) item order
    order = np.argsort(users, kind="stable")  # each user's rows, in file order
    u, step = users[order][1:], np.diff(rank[order])  # (E - 1,)
    same = u == users[order][:-1]
    n_users = int(users.max()) + 1 if len(users) else 0
    up = np.bincount(u[same], weights=step[same] > 0, minlength=n_users)  # (U,)
    down = np.bincount(u[same], weights=step[same] < 0, minlength=n_users)  # (U,)
    moving = (up + down) >= 2
    return np.array([moving.sum(), (moving & (down == 0)).sum(), (moving & (up == 0)).sum()], np.int64)


def warn_if_sorted_by_item(name: str, runs: np.ndarray) -> bool:
    """Without a time column file order is the event order: when every user's item ids run in one direction
    (a log sorted by item, as Last.fm's user_artists.dat), leave-last-out would hold out each user's largest
    (or smallest) id. ``runs``: :func:`item_runs` (summed over partitions). Warns; returns whether it did."""
    moving, rising, falling = (int(v) for v in runs)
    if moving == 0 or rising + falling < moving:
        return False
    held_out = "largest" if falling == 0 else "smallest" if rising == 0 else "largest or smallest"
    log.warning(
        "%s: no time column and every user's item ids run in one direction in file order (the log looks sorted "
        "by item): leave-last-out will hold out each user's %s item id, not their latest event, and measure the "
        "sort order. Shuffle the rows (seeded) or give a time column (data.time_col); see docs/training.md, "
        "logs without time", name, held_out,
    )  # fmt: skip
    return True


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
