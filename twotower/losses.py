"""Softmax retrieval losses: full softmax over the catalog, or sampled softmax with in-batch negatives,
optional mixed uniform negatives, logQ correction and accidental-hit masking."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twotower.model import TwoTower


class SoftmaxLoss(nn.Module):
    """Cross-entropy of each target against the catalog (``full``) or a sampled candidate set.

    ``mode='auto'`` uses the full softmax when the catalog has at most ``full_softmax_max_items`` items.
    Sampled mode: candidates are the batch's unique targets (in-batch negatives, sampled in proportion to
    their frequency) plus ``num_uniform_negatives`` uniform items; logits are corrected by the log of each
    candidate's expected count in the sample (logQ), and a uniform negative equal to the row's target is masked.
    """

    def __init__(
        self,
        mode: str = "auto",
        full_softmax_max_items: int = 20000,
        num_uniform_negatives: int = 0,
        logq_correction: bool = True,
        mask_accidental_hits: bool = True,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in {"auto", "full", "sampled"}:
            raise ValueError(f"loss mode must be 'auto', 'full' or 'sampled', not {mode!r}")
        self.mode = mode
        self.full_softmax_max_items = full_softmax_max_items
        self.num_uniform_negatives = num_uniform_negatives
        self.logq_correction = logq_correction
        self.mask_accidental_hits = mask_accidental_hits
        self.label_smoothing = label_smoothing
        self.register_buffer("item_probs", torch.zeros(0), persistent=False)  # (N + 1,) target frequency

    def set_item_frequencies(self, counts: torch.Tensor) -> None:
        """Training-target counts per item index (index 0 = padding), for the logQ correction."""
        counts = counts.double().clamp_min(0)
        self.item_probs = (counts / counts.sum().clamp_min(1)).float()

    def uses_full_softmax(self, n_items: int) -> bool:
        return self.mode == "full" or (self.mode == "auto" and n_items <= self.full_softmax_max_items)

    def forward(
        self, model: TwoTower, users: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """users (M, D) output-space vectors, targets (M,) item indices >= 1, weights (M,) -> scalar loss."""
        n_items = model.config["n_items"]
        if self.uses_full_softmax(n_items):
            items = model.encode_items()  # (N, D)
            logits = model.score(users, items)  # (M, N)
            labels = targets - 1
        else:
            logits, labels = self._sampled_logits(model, users, targets, n_items)
        losses = F.cross_entropy(
            logits.float(), labels, reduction="none", label_smoothing=self.label_smoothing
        )
        if weights is None:
            return losses.mean()
        return (losses * weights).sum() / weights.sum().clamp_min(1e-8)

    def _sampled_logits(
        self, model: TwoTower, users: torch.Tensor, targets: torch.Tensor, n_items: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        in_batch, labels = torch.unique(targets, return_inverse=True)  # (P,), (M,)
        candidates = in_batch
        n_uniform = self.num_uniform_negatives
        if n_uniform > 0:
            uniform = torch.randint(1, n_items + 1, (n_uniform,), device=targets.device)  # (S,)
            candidates = torch.cat([in_batch, uniform])  # (P + S,)
        logits = model.score(users, model.encode_items(candidates))  # (M, P + S)
        if self.logq_correction and self.item_probs.numel():
            expected = targets.numel() * self.item_probs[candidates] + n_uniform / n_items  # (P + S,)
            logits = logits - expected.clamp_min(1e-12).log()
        if self.mask_accidental_hits and n_uniform > 0:
            hits = candidates.unsqueeze(0) == targets.unsqueeze(1)  # (M, P + S)
            hits[torch.arange(len(targets), device=targets.device), labels] = False
            logits = logits.masked_fill(hits, torch.finfo(logits.dtype).min)
        return logits, labels
