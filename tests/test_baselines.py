"""Baselines against closed forms on a hand-made matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from twotower.baselines import EASE, ItemKNN, Popularity, ProfilePopularity, interaction_matrix

X = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=np.float32))


def batch_of(histories):
    width = max(len(h) for h in histories)
    exclude = torch.zeros(len(histories), width, dtype=torch.long)
    for i, h in enumerate(histories):
        exclude[i, : len(h)] = torch.tensor(h)
    return {"exclude": exclude, "targets": torch.ones(len(histories), dtype=torch.long)}


def test_popularity():
    scores = Popularity(X)(batch_of([[1], [2]]))
    assert scores.tolist() == [[2, 3, 3, 1], [2, 3, 3, 1]]


def test_profile_popularity_by_hand():
    # users 0, 1 share value 1 of feature 0; users 2, 3 have value 2; feature 1 puts every user in value 1
    features = np.array([[1, 1], [1, 1], [2, 1], [2, 1]])
    scorer = ProfilePopularity(X, features, shrink=2.0)
    overall = np.array([2, 3, 3, 1]) / 9
    value1 = (np.array([2, 2, 1, 0]) + 2 * overall) / (5 + 2)  # users 0 and 1: 5 events
    value2 = (np.array([0, 1, 2, 1]) + 2 * overall) / (4 + 2)
    everyone = (np.array([2, 3, 3, 1]) + 2 * overall) / (9 + 2)
    batch = batch_of([[1], [1], [1]]) | {"user_features": torch.tensor([[1, 1], [2, 1], [0, 1]])}
    np.testing.assert_allclose(scorer(batch), [(value1 + everyone) / 2, (value2 + everyone) / 2,
                                               (overall + everyone) / 2], rtol=1e-6)  # fmt: skip
    # a value nobody holds (0, unknown) is the overall distribution; without features, plain popularity order
    assert np.argsort(-ProfilePopularity(X, features[:, :0])(batch_of([[1]]))[0]).tolist()[:1] == [1]
    small = ProfilePopularity(X, features, max_cells=8)  # (3 values x 4 items) = 12 cells: feature 0 left out
    assert [f for f, _ in small.tables] == [1]


def test_itemknn_cosine_by_hand():
    scores = ItemKNN(X, neighbors=3)(batch_of([[1]]))  # history = item index 1 (column 0)
    dense = X.toarray()
    norms = np.linalg.norm(dense, axis=0)
    cosine = dense.T @ dense / np.outer(norms, norms)
    np.fill_diagonal(cosine, 0)
    np.testing.assert_allclose(scores[0], cosine[0], rtol=1e-5)
    top1 = ItemKNN(X, neighbors=1)(batch_of([[1]]))
    assert (top1[0] > 0).sum() == 1 and top1[0].argmax() == 1


def test_ease_closed_form():
    l2 = 2.0
    model = EASE(X, l2=l2)
    dense = X.toarray()
    g = dense.T @ dense + l2 * np.eye(4)
    p = np.linalg.inv(g)
    b = np.eye(4) - p / np.diag(p)
    np.testing.assert_allclose(model.weights, b, atol=1e-5)
    assert np.allclose(np.diag(model.weights), 0)
    np.testing.assert_allclose(model(batch_of([[1, 2]]))[0], b[0] + b[1], atol=1e-5)


def test_interaction_matrix_uses_training_events_only(tiny_data, tiny_split):
    matrix = interaction_matrix(tiny_data, tiny_split)
    assert matrix.shape == (tiny_data.n_users, tiny_data.n_items)
    u = 0
    test_item = tiny_data.items[tiny_split.test_pos[u]] - 1
    train_items = set((tiny_data.items[tiny_data.user_offsets[u] : tiny_split.train_end[u]] - 1).tolist())
    assert matrix[u, test_item] == (1 if test_item in train_items else 0)
    assert set(matrix[u].indices.tolist()) == train_items
