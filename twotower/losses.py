"""Softmax retrieval losses: full softmax over the catalog, or sampled softmax with in-batch negatives,
optional mixed uniform negatives, logQ correction and accidental-hit masking; under data-parallel training the
in-batch negatives and the loss's normalisation span every rank's batch (the global batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twotower import distributed
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
        if candidates is not None and candidates.numel() * length < n_items + 1:  # a large catalog: no (B, N)
            return self.seen_among(candidates)
        first = torch.full(
            (b, n_items + 1), length, dtype=torch.long, device=self.inputs.device
        )  # (B, N + 1)
        where = torch.arange(length, device=self.inputs.device).expand(b, length)  # (B, L)
        first.scatter_reduce_(1, self.inputs, where, reduce="amin")
        first[:, 0] = length  # padding is never an item
        cols = first[:, 1:] if candidates is None else first[:, candidates]  # (B, C)
        small = torch.int16 if length < 2**15 else torch.int32  # the (M, C) gather is the costly part
        return cols.to(small)[self.batch] <= self.position.to(small).unsqueeze(1)  # (M, C)

    def seen_among(self, candidates: torch.Tensor) -> torch.Tensor:
        """(M, C) bool, as :meth:`seen`, from (B, L, C) matches of the window against the candidates: what a
        sampled softmax over a million-item catalog needs instead of a (B, N + 1) first-position table."""
        length = self.inputs.shape[1]
        small = torch.int16 if length < 2**15 else torch.int32
        where = torch.arange(length, device=self.inputs.device, dtype=small).view(1, -1, 1)  # (1, L, 1)
        match = self.inputs.unsqueeze(2) == candidates.view(1, 1, -1)  # (B, L, C); padding 0 is no candidate
        none = torch.full((), length, dtype=small, device=where.device)  # not in the window (filled there)
        first = torch.where(match, where, none).amin(1)  # (B, C)
        return first[self.batch] <= self.position.to(small).unsqueeze(1)  # (M, C)


class SoftmaxLoss(nn.Module):
    """Cross-entropy of each target against the catalog (``full``) or a sampled candidate set.

    ``mode='auto'`` uses the full softmax when the catalog has at most ``full_softmax_max_items`` items.
    Sampled mode: candidates are the batch's unique targets (in-batch negatives, sampled in proportion to
    their frequency) plus ``num_uniform_negatives`` uniform items; logits are corrected by the log of each
    candidate's expected count in the sample (logQ), and a uniform negative equal to the row's target is masked.
    ``mask_history`` removes items the user already had in the window (other than the target itself) from
    the negatives, matching an evaluation that excludes the history.

    ``cross_rank_negatives`` (under ``torch.distributed`` with several ranks): the candidates are the global
    batch's unique targets and every rank's uniform draws, their vectors gathered with gradients; logQ counts
    the global batch's targets; the loss is normalised by the global batch's weight, so that the ranks'
    averaged gradients equal one process's gradient on the concatenated batch (full softmax: only the
    normalisation). Off: each rank's loss is its own batch's, as in one process.
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
        cross_rank_negatives: bool = True,
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
        self.cross_rank_negatives = cross_rank_negatives
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
        unique: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """users (M, D) output-space vectors, targets (M,) item indices >= 1, weights (M,) -> scalar loss.
        ``unique``: ``torch.unique(targets, return_inverse=True)`` computed beforehand (on the host: the sampled
        softmax then reads no count back from the device)."""
        n_items = model.config.n_items
        cross_rank = self.cross_rank_negatives and distributed.active()
        hits = None  # (M, C) bool: a sampled candidate that is the row's own target (not its label)
        if self.uses_full_softmax(n_items):
            candidates = None
            items = model.encode_items()  # (N, D)
            logits = model.score(users, items)  # (M, N)
            labels = targets - 1
        elif cross_rank:
            candidates, logits, labels, hits = self._global_sampled_logits(model, users, targets, n_items)
        else:
            candidates, logits, labels, hits = self._sampled_logits(model, users, targets, n_items, unique)
        blocked = hits
        if self.mask_history and history is not None:
            seen = history.seen(candidates, n_items)  # (M, C)
            blocked = seen if blocked is None else blocked | seen
        if blocked is not None:  # one masking pass over the (M, C) logits for both masks (and its backward)
            blocked.scatter_(1, labels.unsqueeze(1), False)  # a repeated target is the label, not a negative
            # in place: the logits are the product's (or the logQ's) own output, which no backward reads
            logits.masked_fill_(blocked, torch.finfo(logits.dtype).min)
        losses = F.cross_entropy(
            logits.float(), labels, reduction="none", label_smoothing=self.label_smoothing
        )
        if cross_rank:  # this rank's share of the global batch's mean; DDP averages the ranks' gradients
            weight = losses.new_tensor(float(len(losses))) if weights is None else weights.sum()
            total = distributed.all_reduce_sum(weight.float())
            summed = losses.sum() if weights is None else (losses * weights).sum()
            return summed * distributed.rank_and_world()[1] / total.clamp_min(1e-8)
        if weights is None:
            return losses.mean()
        return (losses * weights).sum() / weights.sum().clamp_min(1e-8)

    def _sampled_logits(
        self,
        model: TwoTower,
        users: torch.Tensor,
        targets: torch.Tensor,
        n_items: int,
        unique: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(candidates (C,), logits (M, C), labels (M,), accidental hits (M, C) or None)."""
        if unique is None:
            unique = torch.unique(targets, return_inverse=True)
        in_batch, labels = unique  # (P,), (M,)
        candidates = in_batch
        n_uniform = self.num_uniform_negatives
        if n_uniform > 0:
            uniform = torch.randint(1, n_items + 1, (n_uniform,), device=targets.device)  # (S,)
            candidates = torch.cat([in_batch, uniform])  # (P + S,)
        logits = model.score(users, model.encode_items(candidates))  # (M, P + S)
        if self.logq_correction and self.item_probs.numel():
            expected = targets.numel() * self.item_probs[candidates] + n_uniform / n_items  # (P + S,)
            logits = logits - expected.clamp_min(1e-12).log()
        hits = None
        if self.mask_accidental_hits and n_uniform > 0:
            hits = candidates.unsqueeze(0) == targets.unsqueeze(1)  # (M, P + S); forward masks them
        return candidates, logits, labels, hits

    def _global_sampled_logits(
        self, model: TwoTower, users: torch.Tensor, targets: torch.Tensor, n_items: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`_sampled_logits` over the global batch: each rank encodes its own unique targets and uniform
        draws, the vectors are gathered with gradients (an item that is a target on several ranks keeps the
        lowest rank's vector) and this rank's users are scored against all of them."""
        in_batch = torch.unique(targets)  # (P,)
        n_uniform = self.num_uniform_negatives
        uniform = torch.randint(0, n_items, (n_uniform,), device=targets.device)  # (S,)
        # every rank is seeded alike and may draw alike: a rank-dependent rotation keeps each rank's draw
        # uniform and the ranks' draws distinct
        rank, world = distributed.rank_and_world()
        uniform = (uniform + rank * (n_items // world)) % n_items + 1  # (S,) in 1..N
        local = torch.cat([in_batch, -uniform])  # (P + S,) uniform draws flagged by their sign
        stats = distributed.gather_stats([float(len(local)), float(len(targets))], targets.device)  # (W, 2)
        rows, n_targets = int(stats[:, 0].max()), float(stats[:, 1].sum())
        ids = distributed.gather_rows(local, rows)  # (W * rows,) 0 = padding
        vectors = model.encode_items(local.abs())  # (P + S, D)
        vectors = distributed.gather_rows(vectors, rows, with_grad=True)  # (W * rows, D)
        positive = (ids > 0).nonzero(as_tuple=True)[0]  # (sum P,)
        in_batch, inverse = torch.unique(ids[positive], return_inverse=True)  # (P_g,), (sum P,)
        first = torch.full_like(in_batch, len(positive)).scatter_reduce_(
            0, inverse, torch.arange(len(positive), device=ids.device), reduce="amin"
        )  # (P_g,) first occurrence of each global target
        drawn = (ids < 0).nonzero(as_tuple=True)[0]  # (W * S,)
        candidates = torch.cat([in_batch, -ids[drawn]])  # (P_g + W * S,)
        items = torch.cat([vectors[positive[first]], vectors[drawn]])  # (P_g + W * S, D)
        labels = torch.searchsorted(in_batch, targets)  # (M,)
        logits = model.score(users, items)  # (M, P_g + W * S)
        if self.logq_correction and self.item_probs.numel():
            expected = n_targets * self.item_probs[candidates] + len(drawn) / n_items  # (P_g + W * S,)
            logits = logits - expected.clamp_min(1e-12).log()
        hits = None
        if self.mask_accidental_hits and len(drawn) > 0:
            hits = candidates.unsqueeze(0) == targets.unsqueeze(1)  # (M, P_g + W * S); forward masks them
        return candidates, logits, labels, hits
