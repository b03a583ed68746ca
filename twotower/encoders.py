"""Causal sequence encoders for the user tower: every position sees only itself and earlier positions.

All encoders map ``x`` (B, L, D) with right padding (``valid`` (B, L) bool, padding after the events) to
per-position states (B, L, D). Right padding keeps causality simple: no real position ever sees a pad.
Each is a :class:`SequenceEncoder`, whose ``forward_last`` gives one state per row (the serving path).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def at_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, L, D) states and (B,) positions -> (B, D): each row's state at its position."""
    b, _, d = x.shape
    return x.gather(1, positions.view(b, 1, 1).expand(b, 1, d)).squeeze(1)


# Attention kernels for CUDA tensors, cuDNN's left out: at a recommender's short sequences its calls cost far more
# host time than device time, and they bounded a training step on the host (docs/benchmarks.md, GPU at scale);
# flash and memory-efficient attention launch at a small fixed cost.
_CUDA_ATTENTION = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def _without_cudnn(q: torch.Tensor) -> contextlib.AbstractContextManager:
    """The attention backends for ``q``'s device: on CUDA all but cuDNN; elsewhere (the CPU, an ONNX
    export's trace) the defaults, untouched."""
    return sdpa_kernel(list(_CUDA_ATTENTION)) if q.is_cuda else contextlib.nullcontext()


class SequenceEncoder(nn.Module, ABC):
    """What the user tower needs of an encoder: every state (training) and one state per row (serving)."""

    @abstractmethod
    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L, D) inputs, (B, L) bool right-padding mask -> (B, L, D) causal states."""

    def forward_last(self, x: torch.Tensor, last: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
        """The state at each row's position ``last`` (B,) -> (B, D); ``valid`` (B, L) marks the real events.
        ``last=None``: rows without padding (``valid`` all true), whose state is the final position's.

        By default every state is computed and one is gathered; an encoder that can skip the work for the
        other positions overrides this (the exported serving graphs call it)."""
        states = self(x, valid)  # (B, L, D)
        return states[:, -1] if last is None else at_positions(states, last)  # (B, D)


class MeanEncoder(SequenceEncoder):
    """Running mean of the event embeddings followed by a small MLP (a strong, order-free baseline)."""

    def __init__(self, dim: int, dropout: float = 0.1, **_: object) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mask = valid.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        total = torch.cumsum(x * mask, dim=1)  # (B, L, D)
        count = torch.cumsum(mask, dim=1).clamp_min(1.0)  # (B, L, 1)
        mean = total / count  # (B, L, D)
        return self.norm(mean + self.mlp(mean))


class GRUEncoder(SequenceEncoder):
    """GRU over the events (GRU4Rec-style)."""

    def __init__(self, dim: int, num_layers: int = 1, dropout: float = 0.1, **_: object) -> None:
        super().__init__()
        self.gru = nn.GRU(
            dim, dim, num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)  # (B, L, D); pads come after the events, so they never feed a real state
        return self.norm(out)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.folded = False  # forward() runs forward_folded() (set on the copy an ONNX export traces)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, Dh)."""
        b, length, d = t.shape
        return t.reshape(b, length, self.num_heads, d // self.num_heads).transpose(1, 2)

    def _head_weights(self) -> tuple[torch.Tensor, ...]:
        """Per-head views of the weights the folded paths multiply together (constants in an exported graph):
        ``w_q, w_k, w_v`` (H, Dh, D), the query bias (H, Dh), the output projection's columns of each head
        ``w_p`` (H, D, Dh) and the output bias with the value bias folded in, ``W_p b_v + b_p`` (D,). The key bias
        is left out: it shifts all scores of a head equally, which the softmax cancels."""
        d = self.qkv.in_features
        h, dh = self.num_heads, d // self.num_heads
        # Slices, not split(): the exporter folds slices of constants (it cannot fold a multi-output Split).
        weight, bias = self.qkv.weight, self.qkv.bias
        w_q, w_k, w_v = (weight[i * d : (i + 1) * d].view(h, dh, d) for i in range(3))  # 3 x (H, Dh, D)
        w_p = self.proj.weight.view(d, h, dh).transpose(0, 1)  # (H, D, Dh)
        return w_q, w_k, w_v, bias[:d].view(h, dh), w_p, self.proj.weight @ bias[2 * d :] + self.proj.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return self.forward_folded(x)
        b, length, d = x.shape
        q, k, v = (self._heads(t) for t in self.qkv(x).split(d, dim=-1))  # 3 x (B, H, L, Dh)
        drop = self.dropout if self.training else 0.0
        with _without_cudnn(q):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)  # (B, H, L, Dh)
        out = out.transpose(1, 2).reshape(b, length, d)  # (B, L, D)
        return self.proj(out)

    def forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` (eval, no dropout) with each head's projections folded into (D, D) matrices: no
        per-head reshapes or transposes, so an exported graph has about half the attention's nodes.

        ``q_i.k_j = x_i^T (W_q^T W_k) x_j + (W_k^T b_q).x_j`` + terms of i alone, which cancel in the softmax
        over j; the values and the output projection fold as in :meth:`forward_last`. Same numbers as
        :meth:`forward` up to float rounding (tested)."""
        length = x.shape[1]
        w_q, w_k, w_v, b_q, w_p, b_out = self._head_weights()
        scale = w_q.shape[1] ** -0.5
        w_a = w_q.transpose(1, 2) @ w_k * scale  # (H, D, D)
        b_a = b_q.unsqueeze(1) @ w_k * scale  # (H, 1, D)
        rows = x.unsqueeze(1)  # (B, 1, L, D)
        scores = (rows @ w_a + b_a) @ rows.transpose(-1, -2)  # (B, H, L, L)
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)  # (L, L)
        weights = scores.masked_fill(future, float("-inf")).softmax(-1)  # (B, H, L, L)
        w_out = w_v.transpose(1, 2) @ w_p.transpose(1, 2)  # (H, D, D): value then output projection per head
        return (weights @ (rows @ w_out)).sum(1) + b_out  # (B, L, D)

    def forward_last(
        self, x: torch.Tensor, last: torch.Tensor | None, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention output of one query per row, at position ``last`` (B,), over keys 0..last -> (B, D).

        Rows are right-padded, so the keys up to ``last`` are exactly the ``valid`` (B, L) positions.
        ``last=None, valid=None``: rows without padding, the query is the final position (fewer graph nodes).

        With a single query the key and value projections fold into the weights, so no per-position key
        or value is ever computed:
        ``q.(W_k x + b_k) = (W_k^T q).x + const`` (the constant cancels in the softmax) and
        ``sum_l a_l (W_v x_l + b_v) = W_v (sum_l a_l x_l) + b_v`` (the weights sum to 1); the products of
        weight matrices are constants in the exported graph. Same numbers as :meth:`forward` at ``last``
        up to float rounding (tested), O(L D H) work instead of O(L D^2).
        """
        b, _, d = x.shape
        h = self.num_heads
        here = x[:, -1] if last is None else at_positions(x, last)  # (B, D)
        w_q, w_k, w_v, b_q, w_p, b_out = self._head_weights()
        scale = w_q.shape[1] ** -0.5
        # Query side: u_h = W_k_h^T (W_q_h x_last + b_q_h) / sqrt(Dh), one (H*D, D) matrix for all heads.
        w_u = (w_k.transpose(1, 2) @ w_q * scale).reshape(h * d, d)  # (H*D, D)
        b_u = (w_k.transpose(1, 2) @ b_q.unsqueeze(-1) * scale).reshape(h * d)  # (H*D,)
        u = F.linear(here, w_u, b_u).view(b, h, d)  # (B, H, D)
        scores = u @ x.transpose(1, 2)  # (B, H, L)
        if valid is not None:
            scores = scores.masked_fill(~valid.unsqueeze(1), float("-inf"))
        weights = scores.softmax(-1)  # (B, H, L)
        context = (weights @ x).reshape(b, h * d)  # (B, H*D); position 0 is always valid
        # Output side: proj(concat_h(W_v_h c_h + b_v_h)) = sum_h (W_p,h W_v_h) c_h + (W_p b_v + b_p).
        w_out = (w_p @ w_v).transpose(0, 1).reshape(d, h * d)  # (D, H*D)
        return F.linear(context, w_out, b_out)  # (B, D)


class TransformerBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, dropout: float, attn_dropout: float = 0.0, ff_mult: int = 2
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))  # (B, L, D)
        return x + self.drop(self.ff(self.norm2(x)))

    def forward_last(
        self, x: torch.Tensor, last: torch.Tensor | None, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """The block's output at position ``last`` only (B, D): the same numbers, a fraction of the work."""
        here = x[:, -1] if last is None else at_positions(x, last)  # (B, D)
        here = here + self.drop(self.attn.forward_last(self.norm1(x), last, valid))
        return here + self.drop(self.ff(self.norm2(here)))


class TransformerEncoder(SequenceEncoder):
    """Pre-LayerNorm causal transformer (SASRec-style)."""

    def __init__(
        self, dim: int, num_layers: int = 2, num_heads: int = 2, dropout: float = 0.1, **_: object
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)  # (B, L, D)
        return self.norm(x)

    def forward_last(self, x: torch.Tensor, last: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
        """State at position ``last`` (B,) only: earlier blocks run on every position, the final block on one.

        ``valid`` (B, L) marks the real events of right-padded rows; ``last`` is each row's final one.
        ``last=None``: rows without padding (every position is real, the final one is the state); ``valid`` is
        then not read, so the exported graph has no mask."""
        for block in self.blocks[:-1]:
            x = block(x)  # (B, L, D)
        mask = None if last is None else valid
        return self.norm(self.blocks[-1].forward_last(x, last, mask))  # (B, D)


ENCODERS: dict[str, type[SequenceEncoder]] = {
    "mean": MeanEncoder,
    "gru": GRUEncoder,
    "transformer": TransformerEncoder,
}


def build_encoder(name: str, dim: int, **kwargs: object) -> SequenceEncoder:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name](dim=dim, **kwargs)
