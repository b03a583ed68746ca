"""The user-tower graph's inputs: their names for a model (only the signals it reads) and random examples.

Shared by the export (tracing and parity checks) and the benchmarks; a model without signals has the four
inputs it always had.
"""

from __future__ import annotations

import torch

from twotower.model import TwoTower
from twotower.model_config import ModelConfig

INPUTS = ("items", "events", "dwell", "gaps")
SIGNAL_INPUTS = {
    "queries": "int64 (B, L, T) hashed query tokens each position reads (serving.core.texthash), 0 = pad",
    "context": "int64 (B, L, K) per-event context indices, 0 = unknown (manifest signals.context)",
    "user_features": "int64 (B, F) user-feature indices, 0 = unknown (manifest signals.user_features)",
}


def input_names(config: ModelConfig) -> tuple[str, ...]:
    """The graph's inputs: the four per-event ones, then each signal the model reads (queries (B, L, T),
    context (B, L, K), user_features (B, F)); a model without signals has the graph it always had."""
    extra = (("queries", config.query_buckets), ("context", config.context_sizes),
             ("user_features", config.user_feature_sizes))  # fmt: skip
    return INPUTS + tuple(name for name, on in extra if on)


def random_histories(net: TwoTower, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    config = net.config
    items = torch.randint(1, config.n_items + 1, (batch, length), generator=g)
    events = torch.randint(0, max(config.n_events, 1), (batch, length), generator=g)
    dwell = torch.rand(batch, length, generator=g) * 300 - 20  # some unknown (< 0)
    gaps = torch.rand(batch, length, generator=g) * 1e6 - 1e4
    out = [items, events, dwell, gaps]
    if config.query_buckets:  # about half the positions read a query, of a random number of tokens
        queries = torch.randint(
            1, config.query_buckets, (batch, length, config.max_query_tokens), generator=g
        )
        width = torch.randint(0, config.max_query_tokens + 1, (batch, length, 1), generator=g)
        keep = torch.arange(config.max_query_tokens) < width  # (B, L, T): right-padded token rows
        keep &= torch.rand(batch, length, 1, generator=g) < 0.5
        out.append(queries * keep)
    if config.context_sizes:
        out.append(_random_columns(config.context_sizes, (batch, length), g))  # (B, L, K)
    if config.user_feature_sizes:
        out.append(_random_columns(config.user_feature_sizes, (batch,), g))  # (B, F)
    return tuple(out)


def _random_columns(sizes: tuple[int, ...], shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """(*shape, K) random indices, column k in 0..sizes[k] - 1 (0 = unknown included)."""
    return torch.stack([torch.randint(0, size, shape, generator=g) for size in sizes], -1)
