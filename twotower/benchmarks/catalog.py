"""Synthetic item catalogs with cluster structure and user queries over them (numpy only)."""

from __future__ import annotations

import math

import numpy as np


def clustered_catalog(
    n_items: int, dim: int, seed: int = 0, spread: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) unit item vectors and (C, D) topic centres; C = 4 sqrt(N), Zipf(0.8) topic sizes."""
    rng = np.random.default_rng(seed)
    n_clusters = max(8, int(4 * math.sqrt(n_items)))
    centres = _unit(rng.normal(size=(n_clusters, dim)).astype(np.float32))
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    topic = rng.choice(n_clusters, size=n_items, p=weights / weights.sum())
    noise = rng.normal(size=(n_items, dim)).astype(np.float32) * (spread / math.sqrt(dim))
    return _unit(centres[topic] + noise), centres


def taste_queries(
    centres: np.ndarray, n: int, seed: int = 1, spread: float = 0.6, mixture: int = 1
) -> np.ndarray:
    """(n, D) unit query vectors.

    ``mixture=1`` (default): held-out draws from the catalog's own distribution (a topic by the same Zipf law,
    plus the same noise), as standard ANN benchmarks draw queries. ``mixture=m > 1``: a user mixing ``m``
    random topics (Dirichlet weights): queries between clusters, a much harder case for graph and IVF indexes.
    """
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    if mixture <= 1:
        weights = 1.0 / np.arange(1, len(centres) + 1) ** 0.8
        queries = centres[rng.choice(len(centres), size=n, p=weights / weights.sum())]
    else:
        picks = rng.integers(0, len(centres), size=(n, mixture))
        mix = rng.dirichlet(np.full(mixture, 0.5), size=n).astype(np.float32)  # (n, m)
        queries = np.einsum("nk,nkd->nd", mix, centres[picks])
    return _unit(queries + rng.normal(size=(n, dim)).astype(np.float32) * (spread / math.sqrt(dim)))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
