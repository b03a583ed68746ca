"""Scorers for :func:`twotower.evaluate.evaluate_scorer`: a batch -> (B, N) scores, column j = item index j + 1.

A plain scorer is any callable returning a numpy (B, N) matrix (the baselines). The model's scorers also
score on the model's device (``scores``: a (B, N) tensor) and in catalog chunks (``chunks``: a
:data:`~twotower.ranking.ScoreChunk`, so no (B, N) matrix is ever built); their numpy ``__call__`` is the
same tensor copied to the host, so both rankers see the very same scores.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from serving.core.intent import CategoryIntent
from twotower.model import TwoTower, model_inputs
from twotower.ranking import ScoreChunk

Scorer = Callable[[dict[str, torch.Tensor]], np.ndarray]


class ModelScorer:
    """Scores a batch with a :class:`TwoTower` (item vectors computed once, eval mode, no grad)."""

    def __init__(self, model: TwoTower, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.item_vectors = model.encode_items().to(self.device)  # (N, D)
        model.train(was_training)

    @torch.no_grad()
    def users(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) user vectors on the model's device."""
        was_training = self.model.training
        self.model.eval()
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in model_inputs(batch).items()}
        users = self.model.encode_user(**inputs)  # (B, D)
        self.model.train(was_training)
        return users

    @torch.no_grad()
    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) float32 scores on the model's device."""
        return self.model.score(self.users(batch), self.item_vectors).float()  # (B, N)

    def chunks(self, batch: dict[str, torch.Tensor]) -> ScoreChunk:
        """The batch's scores column chunk by column chunk (the user vectors encoded once)."""
        users = self.users(batch)  # (B, D)

        @torch.no_grad()
        def chunk(start: int, stop: int) -> torch.Tensor:
            return self.model.score(users, self.item_vectors[start:stop]).float()  # (B, stop - start)

        return chunk

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self.scores(batch).cpu().numpy()


class ScaledScorer:
    """A model scorer's logits in serving's units (cosine): times the model's temperature."""

    def __init__(self, scorer: ModelScorer, scale: float) -> None:
        self.scorer, self.scale = scorer, scale
        self.device = scorer.device

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scorer.scores(batch) * self.scale  # (B, N)

    def chunks(self, batch: dict[str, torch.Tensor]) -> ScoreChunk:
        base = self.scorer.chunks(batch)
        return lambda start, stop: base(start, stop) * self.scale  # (B, C)

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self.scores(batch).cpu().numpy()


class IntentScorer:
    """The ranking a bundle serves: a model scorer's scores plus serving's session-intent boost
    (:mod:`serving.core.intent`) on every item, as an exact index serves it.

    ``scale`` turns the scorer's logits into serving's scores (the model's temperature: logits are
    cosine / temperature). The boost is one (B, C) x (C, N) product on the scorer's device.
    """

    def __init__(self, scorer: ModelScorer, intent: CategoryIntent, scale: float = 1.0) -> None:
        self.scorer, self.intent, self.scale = scorer, intent, scale
        self.device = scorer.device
        self.members = torch.from_numpy(intent.members.astype(np.float32)).to(self.device)  # (N, C)

    def _weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        lift = self.intent.padded_lift(batch["items"].numpy())  # (B, C) on the host: small
        return torch.from_numpy(self.intent.query_weights(lift)).to(self.device)  # (B, C)

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scorer.scores(batch) * self.scale + self._weights(batch) @ self.members.T  # (B, N)

    def chunks(self, batch: dict[str, torch.Tensor]) -> ScoreChunk:
        base, weights = self.scorer.chunks(batch), self._weights(batch)  # (B, C)

        def chunk(start: int, stop: int) -> torch.Tensor:
            return base(start, stop) * self.scale + weights @ self.members[start:stop].T  # (B, C)

        return chunk

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self.scores(batch).cpu().numpy()
