"""Non-neural baselines scored by the same evaluation code: popularity, item-kNN (cosine), EASE, and
popularity by user profile (for the cold-start protocol).

Each is fitted on the training events only and scores a query from the user's history before the target.
Hyper-parameters are picked on the validation queries (never on test).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from twotower.data.schema import EncodedLog
from twotower.data.splits import Split

log = logging.getLogger(__name__)

KNN_BLOCK_CELLS = 2**26  # dense similarity cells per item-kNN row block (256 MB of float32)
KNN_MAX_ITEMS = 250_000  # item-kNN above this: N / block products of (U, N), too slow for a baseline


def interaction_matrix(data: EncodedLog, split: Split) -> sp.csr_matrix:
    """(U, N) binary user-item matrix of training events."""
    mask = split.train_mask(data)
    rows, cols = data.users[mask], data.items[mask] - 1
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(data.n_users, data.n_items))
    matrix.data[:] = 1.0  # repeated (user, item) pairs count once
    return matrix


def history_matrix(exclude: torch.Tensor, n_items: int) -> sp.csr_matrix:
    """(B, H) padded history item indices -> (B, N) binary sparse rows."""
    hist = exclude.numpy()
    rows, cols = np.nonzero(hist)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, hist[rows, cols] - 1)), shape=(hist.shape[0], n_items)
    )
    matrix.data[:] = 1.0
    return matrix


class Popularity:
    """Most-interacted items first (the floor every model must clear)."""

    name = "popularity"

    def __init__(self, train: sp.csr_matrix) -> None:
        self.counts = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)  # (N,)
        self.params: dict = {}

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(batch["targets"]), len(self.counts)))


class ProfilePopularity:
    """Popularity among the users who share each of the user's static features (one segment per feature),
    averaged over the features: the classic demographic recommender for a user known only by a profile.

    Each feature value's item distribution is shrunk toward the global one by ``shrink`` pseudo-events, so a
    rare value (or the unknown index 0) falls back to plain popularity. A feature whose (values x items) table
    would pass ``max_cells`` is left out (logged). Reads ``user_features`` (B, F) from the batch."""

    name = "profile_popularity"

    def __init__(
        self, train: sp.csr_matrix, user_features: np.ndarray, shrink: float = 1000.0, max_cells: int = 2**26
    ) -> None:
        self.params = {"shrink": shrink}
        counts = np.asarray(train.sum(axis=0)).ravel()  # (N,)
        overall = counts / max(counts.sum(), 1.0)  # (N,)
        self.tables: list[tuple[int, np.ndarray]] = []  # (feature column, (V, N) shrunk distributions)
        n_users = user_features.shape[0]
        for f in range(user_features.shape[1]):
            values = user_features[:, f]  # (U,)
            n_values = int(values.max()) + 1 if n_users else 1
            if n_values * train.shape[1] > max_cells:
                log.info("profile popularity: feature %d left out (%d values x %d items)", f, n_values,
                         train.shape[1])  # fmt: skip
                continue
            members = sp.csr_matrix((np.ones(n_users, np.float32), (values, np.arange(n_users))),
                                    shape=(n_values, n_users))  # fmt: skip
            segment = np.asarray((members @ train).todense(), np.float64)  # (V, N) events per value
            table = (segment + shrink * overall) / (segment.sum(1, keepdims=True) + shrink)  # (V, N)
            self.tables.append((f, table.astype(np.float32)))
        self.overall = overall.astype(np.float32)

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        n = len(batch["targets"])
        if not self.tables or "user_features" not in batch:
            return np.broadcast_to(self.overall, (n, len(self.overall)))
        features = batch["user_features"].numpy()  # (B, F)
        return sum(table[features[:, f]] for f, table in self.tables) / len(self.tables)  # (B, N)


class ItemKNN:
    """score(u, j) = sum over history items i of cosine(i, j), keeping each item's top ``neighbors``."""

    name = "itemknn"

    def __init__(self, train: sp.csr_matrix, neighbors: int = 100, shrink: float = 0.0) -> None:
        self.params = {"neighbors": neighbors, "shrink": shrink}
        x = train.tocsc().astype(np.float32)
        xt = x.T.tocsr()  # (N, U)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())  # (N,)
        n = x.shape[1]
        keep = min(neighbors, max(n - 1, 1))
        rows, cols, vals = [], [], []
        step = max(1, min(2048, KNN_BLOCK_CELLS // max(n, 1)))  # row blocks keep memory at step x N
        for start in range(0, n, step):
            stop = min(start + step, n)
            block = (xt[start:stop] @ x).toarray()  # (b, N) co-occurrence
            block /= np.outer(norms[start:stop], norms) + shrink + 1e-8
            block[np.arange(stop - start), np.arange(start, stop)] = 0.0
            top = np.argpartition(-block, keep - 1, axis=1)[:, :keep]  # (b, keep)
            values = np.take_along_axis(block, top, axis=1)
            nz = values > 0
            rows.append(np.repeat(np.arange(start, stop), keep)[nz.ravel()])
            cols.append(top[nz])
            vals.append(values[nz])
        self.sim = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n, n),
            dtype=np.float32,
        )

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return (history_matrix(batch["exclude"], self.sim.shape[0]) @ self.sim).toarray()


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck 2019): B = I - P diagMat(1 / diag(P)), P = (X'X + lambda I)^-1."""

    name = "ease"

    def __init__(self, train: sp.csr_matrix, l2: float = 500.0, gram: np.ndarray | None = None) -> None:
        self.params = {"l2": l2}
        g = gram if gram is not None else gram_matrix(train)
        g = g.copy()
        g[np.diag_indices_from(g)] += l2
        p = np.linalg.inv(g)
        b = p / (-np.diag(p))
        np.fill_diagonal(b, 0.0)
        self.weights = b.astype(np.float32)  # (N, N)

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return np.asarray(history_matrix(batch["exclude"], self.weights.shape[0]) @ self.weights)


def gram_matrix(train: sp.csr_matrix) -> np.ndarray:
    """(N, N) float64 item co-occurrence X'X."""
    return (train.T @ train).toarray().astype(np.float64)


def skip_reason(name: str, n_items: int, ease_max_items: int, knn_max_items: int | None = None) -> str | None:
    """Why baseline ``name`` cannot run on a catalog of ``n_items`` (``None``: it runs).

    EASE inverts a dense N x N matrix (N^2 float64: 8 TB at a million items); item-kNN builds N x N cosine
    similarities block by block, N / block sparse products over every user: hours at a million items.
    """
    if name == "ease" and n_items > ease_max_items:
        return (f"{n_items} items > eval.ease_max_items={ease_max_items}: EASE inverts a dense N x N matrix "
                f"({n_items**2 * 8 / 2**30:.0f} GiB in float64)")  # fmt: skip
    limit = KNN_MAX_ITEMS if knn_max_items is None else int(knn_max_items)
    if name == "itemknn" and n_items > limit:
        return (f"{n_items} items > eval.knn_max_items={limit}: item-kNN computes N x N cosine similarities "
                "(N / block sparse products over every user)")  # fmt: skip
    return None


def candidate_grid(
    name: str,
    train: sp.csr_matrix,
    knn_neighbors: Sequence[int],
    ease_l2: Sequence[float],
    ease_max_items: int,
    ease_grid_max_items: int = 5000,
):
    """Yield fitted baselines of one family over its hyper-parameter grid.

    EASE costs one dense N x N inverse per L2 value, so above ``ease_grid_max_items`` items only the middle
    value of ``ease_l2`` is fitted.
    """
    n_items = train.shape[1]
    if name == "popularity":
        yield Popularity(train)
    elif name == "itemknn":
        for k in knn_neighbors:
            yield ItemKNN(train, neighbors=min(int(k), max(n_items - 1, 1)))
    elif name == "ease":
        if n_items > ease_max_items:
            log.info("EASE skipped: %d items > ease_max_items=%d", n_items, ease_max_items)
            return
        gram = gram_matrix(train)
        grid = list(ease_l2) if n_items <= ease_grid_max_items else [sorted(ease_l2)[len(ease_l2) // 2]]
        for l2 in grid:
            yield EASE(train, l2=float(l2), gram=gram)
    else:
        raise ValueError(f"unknown baseline {name!r}")
