"""The simulator's oracle and choice model: EASE fitted on the bundle's stored histories, and a multinomial
logit over the oracle's scores of the offered items.

The oracle is a different model from the one under test (a closed-form item-item linear autoencoder, Steck
2019), so a policy cannot score well by agreeing with itself. numpy + scipy only (no torch): this mirrors
:class:`twotower.baselines.EASE` without importing the training side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)

MAX_ITEMS = 20_000  # one dense (N, N) float64 inverse: ~3 GB at this size, beyond it EASE is not a fit


def interaction_matrix(
    histories: pd.DataFrame, row_of: Mapping[str, int], n_items: int
) -> tuple[sp.csr_matrix, list[str]]:
    """(U, N) binary user x item matrix of a stored-histories table (``user_id, item_id, ...``); items not
    in ``row_of`` are left out. Returns the matrix and its user ids (row order)."""
    users = histories["user_id"].astype(str).to_numpy()
    rows = np.array([row_of.get(str(i), -1) for i in histories["item_id"]], dtype=np.int64)  # (E,)
    known = rows >= 0
    user_ids, user_rows = np.unique(users[known], return_inverse=True)  # (U,), (E',)
    matrix = sp.csr_matrix(
        (np.ones(int(known.sum()), np.float64), (user_rows, rows[known])), shape=(len(user_ids), n_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # repeated events of a pair count once
    return matrix, user_ids.tolist()


def ease_weights(x: sp.csr_matrix, l2: float) -> np.ndarray:
    """(N, N) float64 EASE weights: B = I - P / diag(P) with P = (X'X + l2 I)^-1, so diag(B) = 0."""
    n = x.shape[1]
    if n > MAX_ITEMS:
        raise ValueError(f"EASE needs a dense {n} x {n} inverse; the oracle supports up to {MAX_ITEMS} items")
    gram = (x.T @ x).toarray().astype(np.float64)  # (N, N)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)  # (N, N)
    b = -p / np.diag(p)[None, :]  # column j divided by P_jj
    np.fill_diagonal(b, 0.0)
    return b


class EaseOracle:
    """Scores every item for a user's current history: ``x_u @ B`` with ``x_u`` the (N,) 0/1 history row."""

    def __init__(self, weights: np.ndarray, l2: float, n_users: int) -> None:
        self.weights = weights  # (N, N)
        self.l2 = l2
        self.n_users = n_users

    @classmethod
    def fit(cls, histories: pd.DataFrame, item_ids: Sequence[str], l2: float = 500.0) -> EaseOracle:
        row_of = {str(item): row for row, item in enumerate(item_ids)}
        x, users = interaction_matrix(histories, row_of, len(item_ids))
        log.info("fitting the EASE oracle on %d users x %d items (l2=%g)", len(users), len(item_ids), l2)
        return cls(ease_weights(x, l2), l2, len(users))

    @property
    def description(self) -> str:
        return f"ease(l2={self.l2:g}) on the bundle's stored histories ({self.n_users} users)"

    def scores(self, consumed: Sequence[Sequence[int]]) -> np.ndarray:
        """(U, N) oracle scores for each user's consumed rows (their whole simulated history so far)."""
        n = self.weights.shape[0]
        x = np.zeros((len(consumed), n), dtype=np.float64)  # (U, N)
        for u, rows in enumerate(consumed):
            x[u, np.asarray(rows, dtype=np.int64)] = 1.0
        return x @ self.weights


def choice_probabilities(offered: np.ndarray, spread: float, temperature: float) -> np.ndarray:
    """(k,) multinomial-logit probabilities of consuming each offered item.

    ``offered``: (k,) oracle scores of the offered items; ``spread``: the user's score standard deviation over
    the catalog, so that ``temperature`` means the same for every user and data set (in standard deviations);
    temperature 0 picks the oracle's best offered item.
    """
    if temperature <= 0:
        out = np.zeros(len(offered))
        out[int(np.argmax(offered))] = 1.0
        return out
    logits = offered / (max(spread, 1e-12) * temperature)  # (k,)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def choose(offered: np.ndarray, spread: float, temperature: float, rng: np.random.Generator) -> int:
    """Index into ``offered`` of the item the user consumes (one uniform draw from ``rng``)."""
    cumulative = np.cumsum(choice_probabilities(offered, spread, temperature))  # (k,)
    return int(
        min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), len(offered) - 1)
    )
