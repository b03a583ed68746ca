"""The statistics that say which regime a log is in (dense or sparse, tie-heavy or not), for metrics.json."""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.data.schema import EncodedLog
from twotower.data.splits import Split


def log_stats(data: EncodedLog, split: Split, rare_events: int = 2) -> dict[str, Any]:
    """Events per user, ties between a user's consecutive events, and how much training evidence items have.

    ``rare_share`` is the share of the catalog with at most ``rare_events`` training events, and
    ``rare_in_test_history`` the share of test histories holding such an item: the ids whose embeddings the
    model shrinks towards their categories (``model.id_prior_events``).
    """
    lengths = np.diff(data.user_offsets)  # (U,)
    same_user = data.users[1:] == data.users[:-1]  # (E - 1,)
    tied = same_user & (data.ts[1:] == data.ts[:-1]) if data.has_time else np.zeros_like(same_user)
    counts = np.bincount(data.items[split.train_mask(data)], minlength=data.n_items + 1)  # (N + 1,)
    users, positions = split.targets("test")
    starts = data.user_offsets[users]
    rare_history = [
        bool((counts[data.items[s:p]] <= rare_events).any()) for s, p in zip(starts, positions, strict=True)
    ]
    target_tied = [bool(data.has_time and data.ts[p] == data.ts[p - 1]) for p in positions]
    return {
        "events_per_user_mean": round(float(lengths.mean()), 3),
        "events_per_user_median": float(np.median(lengths)),
        "tied_consecutive_share": round(float(tied.sum() / max(same_user.sum(), 1)), 4),
        "test_target_tied_share": round(float(np.mean(target_tied)) if target_tied else 0.0, 4),
        "train_events_per_item_mean": round(float(counts[1:].mean()), 3),
        "rare_events": rare_events,
        "rare_share": round(float((counts[1:] <= rare_events).mean()), 4),
        "unseen_in_train_share": round(float((counts[1:] == 0).mean()), 4),
        "rare_in_test_history": round(float(np.mean(rare_history)) if rare_history else 0.0, 4),
    }
