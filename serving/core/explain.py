""" "Because you ...": which of a user's recent events an item was recommended for.

The default method is similarity in the model's item space: an item's ``because`` is the recent history items
(the newest ``window`` events) whose item vectors are closest to its vector, best first. The user vector is a
learned function of those same item vectors, so the history items nearest to a recommended item are the ones
that pull the user vector toward it; it costs one small matrix product per request.

Its exact twin is leave-one-out (:func:`leave_one_out_drops`): the score an item loses when one history event
is removed and the user re-encoded, one encode per event. It answers "which event mattered" directly, at
``window`` times the encoding cost, so it is for checking and offline analysis, not the request path.

Either way an explanation only ever names items of the user's own history. No torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

WINDOW = 20  # the most recent events an explanation may name
TOP = 3  # history items named per recommended item


def because_similar(
    item_vectors: np.ndarray, history_rows: np.ndarray, history_vectors: np.ndarray, top: int = TOP
) -> list[list[int]]:
    """Per recommended item (L, D), the history rows (H,) with vectors (H, D) most similar to it, best first.

    A history item seen twice is named once; ties go to the more recent event."""
    if not len(history_rows) or not len(item_vectors):
        return [[] for _ in range(len(item_vectors))]
    newest_first = history_rows[::-1]
    if len(set(newest_first.tolist())) == len(newest_first):
        keep = np.arange(len(history_rows) - 1, -1, -1)  # (H,) positions, newest first
    else:
        _, first = np.unique(newest_first, return_index=True)  # the newest copy of each item
        keep = len(history_rows) - 1 - np.sort(first)  # newest first
    sims = item_vectors @ history_vectors[keep].T  # (L, U), columns newest first
    order = np.argsort(-sims, axis=1, kind="stable")[:, :top]  # stable: ties keep the newer column
    return history_rows[keep][order].tolist()


def leave_one_out_drops(
    encode: Callable[[np.ndarray], np.ndarray],
    history_len: int,
    item_vectors: np.ndarray,
    window: int = WINDOW,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact twin: ``encode(keep)`` maps a (H,) bool mask of kept events to a (D,) user vector.

    Returns the positions of the newest ``window`` events (W,) and the (L, W) score drop of each item when
    that event is left out (positive: the event raised the item's score)."""
    positions = np.arange(max(0, history_len - window), history_len)  # (W,)
    full = item_vectors @ encode(np.ones(history_len, dtype=bool))  # (L,)
    drops = np.empty((len(item_vectors), len(positions)), dtype=np.float64)
    for j, position in enumerate(positions):
        keep = np.ones(history_len, dtype=bool)
        keep[position] = False
        drops[:, j] = full - item_vectors @ encode(keep) if keep.any() else full
    return positions, drops
