"""What the simulator measures: the category entropy of recent consumption and the long-tail share.

- **Category mix** of a list of items: each item spreads a weight of 1 evenly over its categories (a Drama
  Romance film gives 0.5 to each); items without a category add nothing. The mix is those weights normalised.
- **Entropy** of a user: the Shannon entropy, in bits, of the category mix of their most recent ``window``
  events (0 for a window without categorised items). A policy's entropy is the mean over users.
- **Long tail**: the items outside the *head*, the smallest set of most-trained items (by ``train_count``,
  ties in catalog order) that holds ``head_share`` of all training interactions. Items never trained on are
  in the tail.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from serving.core.diversify import head_mask


def category_weights(items: pd.DataFrame, categories: Sequence[str]) -> np.ndarray:
    """(N, C) float64: row i spreads 1 evenly over item i's categories (all zeros for none); rows in the
    order of ``items`` (the bundle's catalog rows)."""
    column = {name: c for c, name in enumerate(categories)}
    out = np.zeros((len(items), len(categories)), dtype=np.float64)  # (N, C)
    for row, cats in enumerate(items["categories"]):
        known = [column[str(c)] for c in cats if str(c) in column]
        if known:
            out[row, known] += 1.0 / len(known)
    return out


def entropy_bits(mix: np.ndarray) -> float:
    """Shannon entropy in bits of non-negative weights (normalised here; 0 for all zeros)."""
    total = float(mix.sum())
    if total <= 0:
        return 0.0
    p = mix[mix > 0] / total
    return float(-(p * np.log2(p)).sum())


def recent_entropy(rows: Sequence[int], weights: np.ndarray, window: int) -> float:
    """Entropy of the category mix of the last ``window`` catalog rows of one user's history."""
    recent = np.asarray(rows[-window:], dtype=np.int64) if window > 0 else np.zeros(0, np.int64)
    return entropy_bits(weights[recent].sum(axis=0)) if len(recent) else 0.0  # (C,) mix


def tail_mask(train_count: np.ndarray, head_share: float = 0.8) -> np.ndarray:
    """(N,) bool: the item is in the long tail, outside the head holding ``head_share`` of the interactions
    (the head exploration avoids: :func:`serving.core.diversify.head_mask`)."""
    return ~head_mask(train_count, head_share)
