"""Learning-rate schedules usable from Hydra as partials (``_partial_: true``, the optimizer comes later)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, max_epochs: int, warmup_epochs: int = 1, min_ratio: float = 0.05
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to ``min_ratio`` of the base rate at ``max_epochs``."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        progress = min(1.0, (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
