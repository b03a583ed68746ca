"""Softmax retrieval losses: full softmax over the catalog, or sampled softmax with in-batch negatives,
optional mixed uniform negatives, logQ correction and accidental-hit masking."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twotower.model import TwoTower


class WindowHistory:
    """Which items each training row has already seen inside its window.

    ``inputs`` (B, L) are the window's input items; row m of the loss is window ``batch[m]`` at position
    ``position[m]`` and has seen ``inputs[batch[m], :position[m] + 1]``.
    """

    def __init__(self, inputs: torch.Tensor, batch: torch.Tensor, position: torch.Tensor) -> None:
        self.inputs, self.batch, self.position = inputs, batch, position

    def seen(self, candidates: torch.Tensor | None, n_items: int) -> torch.Tensor:
        """(M, C) bool: candidate c (default: the whole catalog 1..N) occurs in the row's history."""
        b, length = self.inputs.shape
        first = torch.full(
            (b, n_items + 1), length, dtype=torch.long, device=self.inputs.device
        )  # (B, N + 1)
        where = torch.arange(length, device=self.inputs.device).expand(b, length)  # (B, L)
        first.scatter_reduce_(1, self.inputs, where, reduce="amin")
        first[:, 0] = length  # padding is never an item
        cols = first[:, 1:] if candidates is None else first[:, candidates]  # (B, C)
        small = torch.int16 if length < 2**15 else torch.int32  # the (M, C) gather is the costly part
        return cols.to(small)[self.batch] <= self.position.to(small).unsqueeze(1)  # (M, C)


class SoftmaxLoss(nn.Module):
    """Cross-entropy of each target against the catalog (``full``) or a sampled candidate set.

    ``mode='auto'`` uses the full softmax when the catalog has at most ``full_softmax_max_items`` items.
    Sampled mode: candidates are the batch's unique targets (in-batch negatives, sampled in proportion to
    their frequency) plus ``num_uniform_negatives`` uniform items; logits are corrected by the log of each
    candidate's expected count in the sample (logQ), and a uniform negative equal to the row's target is masked.
    ``mask_history`` removes items the user already had in the window (other than the target itself) from
    the negatives, matching an evaluation that excludes the history.
    """

    def __init__(
        self,
        mode: str = "auto",
        full_softmax_max_items: int = 20000,
        num_uniform_negatives: int = 0,
        logq_correction: bool = True,
        mask_accidental_hits: bool = True,
        label_smoothing: float = 0.0,
        mask_history: bool = False,
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
        self.mask_history = mask_history
        self.register_buffer("item_probs", torch.zeros(0), persistent=False)  # (N + 1,) target frequency

    def set_item_frequencies(self, counts: torch.Tensor) -> None:
        """Training-target counts per item index (index 0 = padding), for the logQ correction."""
        counts = counts.double().clamp_min(0)
        self.item_probs = (counts / counts.sum().clamp_min(1)).float()

    def uses_full_softmax(self, n_items: int) -> bool:
        return self.mode == "full" or (self.mode == "auto" and n_items <= self.full_softmax_max_items)

    def forward(
        self,
        model: TwoTower,
        users: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        history: WindowHistory | None = None,
    ) -> torch.Tensor:
        """users (M, D) output-space vectors, targets (M,) item indices >= 1, weights (M,) -> scalar loss."""
        n_items = model.config.n_items
        if self.uses_full_softmax(n_items):
            candidates = None
            items = model.encode_items()  # (N, D)
            logits = model.score(users, items)  # (M, N)
            labels = targets - 1
        else:
            candidates, logits, labels = self._sampled_logits(model, users, targets, n_items)
        if self.mask_history and history is not None:
            rows = torch.arange(len(labels), device=labels.device)
            label_logits = logits[rows, labels]  # (M,) kept: a repeated target is the label, not a negative
            logits.masked_fill_(history.seen(candidates, n_items), torch.finfo(logits.dtype).min)  # in place:
            logits.index_put_((rows, labels), label_logits)  # the (M, C) logits are never copied
        losses = F.cross_entropy(
            logits.float(), labels, reduction="none", label_smoothing=self.label_smoothing
        )
        if weights is None:
            return losses.mean()
        return (losses * weights).sum() / weights.sum().clamp_min(1e-8)

    def _sampled_logits(
        self, model: TwoTower, users: torch.Tensor, targets: torch.Tensor, n_items: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        return candidates, logits, labels
