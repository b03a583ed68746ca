"""The two-tower model as plain ``nn.Module`` code (no Lightning).

- :class:`ItemTower`: item id embedding + mean of its category embeddings.
- :class:`UserTower`: the last ``max_len`` events (item, event type, dwell bucket, time-gap bucket, position)
  through a causal encoder; the user vector is the state at the last event.
- :class:`TwoTower`: both towers, ``encode_user`` / ``encode_items`` and the dot-product score.

Item index 0 is padding everywhere. Dwell and gap are raw seconds (-1 = unknown); they are bucketed inside
the model with comparisons, so the exported graph takes raw values.
"""

from __future__ import annotations

import torch
from torch import nn

from twotower.encoders import build_encoder
from twotower.model_config import ModelConfig

# Log-spaced bucket edges in seconds. Bucket 0 = unknown (negative value).
DWELL_EDGES = [1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0]
GAP_EDGES = [10.0, 60.0, 300.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0,
             30 * 86400.0]  # fmt: skip


def bucketize(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(…) seconds -> (…) int64 bucket: 0 if unknown (< 0 or NaN), else 1 + number of edges <= value.

    One comparison against ``[0, *edges]`` (edges are positive) gives both cases in two graph nodes.
    """
    bounds = torch.cat([edges.new_zeros(1), edges])  # (E + 1,), folded to a constant at export
    return (values.unsqueeze(-1) >= bounds).sum(-1)  # (...)


class ItemTower(nn.Module):
    """Item vector = weight * id embedding + mean of category embeddings (categories alone encode a new item).

    The per-item ``id_weight`` (1 until :meth:`set_id_weights`) shrinks the id embedding of rarely seen items
    towards their categories: an id fitted on one or two events is mostly noise, and in a short history that
    noise is a large share of the user vector. An item never seen in training is read as a new item is.
    """

    def __init__(self, n_items: int, item_categories: torch.Tensor, n_categories: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("id_weight", torch.ones(n_items + 1), persistent=True)  # (N + 1,)
        self.register_load_state_dict_pre_hook(_default_id_weight)
        self.id_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.id_embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()
        self.category_embedding = nn.Embedding(max(n_categories, 1), dim, padding_idx=0)
        nn.init.normal_(self.category_embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            self.category_embedding.weight[0].zero_()
        self.register_buffer("item_categories", item_categories.long(), persistent=True)  # (N + 1, C)

    def encode_categories(self, categories: torch.Tensor) -> torch.Tensor:
        """(…, C) category indices (0 = none) -> (…, D) mean category embedding."""
        emb = self.category_embedding(categories)  # (..., C, D)
        mask = (categories > 0).unsqueeze(-1).to(emb.dtype)  # (..., C, 1)
        return (emb * mask).sum(-2) / mask.sum(-2).clamp_min(1.0)  # (..., D)

    def set_id_weights(self, counts: torch.Tensor, prior: float) -> None:
        """``id_weight = n / (n + prior)`` from (N + 1,) training events per item (a pseudo-count prior)."""
        counts = torch.as_tensor(counts, dtype=torch.float32, device=self.id_weight.device).clamp_min(0)
        if counts.shape != self.id_weight.shape:
            raise ValueError(
                f"counts {tuple(counts.shape)} for an item table of {tuple(self.id_weight.shape)}"
            )
        weight = counts / (counts + prior) if prior > 0 else torch.ones_like(counts)
        self.id_weight.copy_(weight)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """(…) item indices -> (…, D)."""
        ids = self.id_embedding(items) * self.id_weight[items].unsqueeze(-1)  # (..., D)
        return ids + self.encode_categories(self.item_categories[items])


def _default_id_weight(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Weights saved before ``id_weight`` existed load with weight 1 for every id (what they were trained with)."""
    key = prefix + "id_weight"
    if key not in state_dict and prefix + "id_embedding.weight" in state_dict:
        state_dict[key] = torch.ones(len(state_dict[prefix + "id_embedding.weight"]))


class UserTower(nn.Module):
    """The last ``max_len`` events (item via the shared item tower, event type, dwell and gap buckets,
    position) through the configured causal encoder."""

    def __init__(self, item_tower: ItemTower, config: ModelConfig) -> None:
        super().__init__()
        dim, max_len = config.dim, config.max_len
        self.item_tower = item_tower  # shared: history items are read through the item tower
        self.max_len = max_len
        self.use_events, self.use_dwell, self.use_time = config.use_events, config.use_dwell, config.use_time
        self.event_embedding = nn.Embedding(max(config.n_events, 1), dim)
        self.dwell_embedding = nn.Embedding(len(DWELL_EDGES) + 2, dim)
        self.gap_embedding = nn.Embedding(len(GAP_EDGES) + 2, dim)
        self.position_embedding = nn.Embedding(max_len, dim)
        for emb in (self.event_embedding, self.dwell_embedding, self.gap_embedding, self.position_embedding):
            nn.init.normal_(emb.weight, std=0.02)
        self.register_buffer("dwell_edges", torch.tensor(DWELL_EDGES), persistent=False)
        self.register_buffer("gap_edges", torch.tensor(GAP_EDGES), persistent=False)
        self.input_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = build_encoder(
            config.encoder,
            dim,
            dropout=config.dropout,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
        )
        # The optional signals are built after everything above, so a model without them draws the same
        # initial weights from the same seed as before they existed.
        self.query_embedding = self.context_embedding = self.feature_embedding = self.start_embedding = None
        if config.query_buckets:
            self.query_embedding = nn.Embedding(config.query_buckets, dim, padding_idx=0)
            nn.init.normal_(self.query_embedding.weight, std=dim**-0.5)  # tokens are ids: scaled as item ids
            with torch.no_grad():
                self.query_embedding.weight[0].zero_()
        if config.context_sizes:
            self.context_embedding = nn.Embedding(sum(config.context_sizes), dim)
            nn.init.normal_(self.context_embedding.weight, std=0.02)
            self.register_buffer("context_offsets", _offsets(config.context_sizes), persistent=False)
        if config.user_feature_sizes:
            self.feature_embedding = nn.Embedding(sum(config.user_feature_sizes), dim)
            nn.init.normal_(self.feature_embedding.weight, std=0.02)
            self.register_buffer("feature_offsets", _offsets(config.user_feature_sizes), persistent=False)
            self.start_embedding = nn.Parameter(torch.randn(dim) * 0.02)  # (D,)

    def start(self, user_features: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, D) the sequence-opening token: a learned start vector + the user's feature embeddings."""
        assert self.start_embedding is not None
        x = self.start_embedding.expand(batch, -1)  # (B, D)
        if user_features is not None:
            x = x + self.feature_embedding(user_features + self.feature_offsets).sum(
                -2
            )  # (B, F, D) -> (B, D)
        return x

    def embed(
        self,
        items: torch.Tensor,
        events: torch.Tensor,
        dwell: torch.Tensor,
        gaps: torch.Tensor,
        queries: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        user_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-event inputs (B, L, D): item vector + event, dwell and gap buckets + position, plus the
        position's hashed query tokens (B, L, T) as a mean bag and its context (B, L, K) when the model reads
        them. With user features, a start token opens the sequence: (B, 1 + L, D)."""
        length = items.shape[1]
        x = self.item_tower(items)  # (B, L, D)
        if self.use_events:
            x = x + self.event_embedding(events)
        if self.use_dwell:
            x = x + self.dwell_embedding(bucketize(dwell, self.dwell_edges))
        if self.use_time:
            x = x + self.gap_embedding(bucketize(gaps, self.gap_edges))
        if self.query_embedding is not None and queries is not None:
            bag = self.query_embedding(queries)  # (B, L, T, D); bucket 0 (padding) is a zero row
            count = (queries > 0).sum(-1, keepdim=True).clamp_min(1).to(bag.dtype)  # (B, L, 1)
            x = x + bag.sum(-2) / count  # (B, L, D): the mean of the position's query tokens
        if self.context_embedding is not None and context is not None:
            x = x + self.context_embedding(context + self.context_offsets).sum(
                -2
            )  # (B, L, K, D) -> (B, L, D)
        if length > self.max_len and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            raise ValueError(f"history length {length} exceeds max_len {self.max_len}; keep the last events")
        positions = self.position_embedding.weight[:length]  # (L, D): one Slice in the exported graph
        x = x + positions  # (B, L, D)
        if self.start_embedding is not None:
            x = torch.cat([self.start(user_features, items.shape[0]).unsqueeze(1), x], 1)  # (B, 1 + L, D)
        return self.dropout(self.input_norm(x))

    def valid(self, items: torch.Tensor) -> torch.Tensor:
        """(B, L') bool real positions: the events, after the start token when there is one."""
        valid = items > 0  # (B, L)
        if self.start_embedding is None:
            return valid
        return torch.cat([torch.ones_like(valid[:, :1]), valid], 1)  # (B, 1 + L)

    def states(self, items, events, dwell, gaps, **signals: torch.Tensor | None) -> torch.Tensor:
        """Per-position user states (B, L', D); position t summarises events 0..t. Inputs are (B, L), right-padded.
        L' = L, or 1 + L with a start token (state 0 then reads the user features alone)."""
        return self.encoder(self.embed(items, events, dwell, gaps, **signals), self.valid(items))

    def forward(
        self,
        items: torch.Tensor,
        events: torch.Tensor,
        dwell: torch.Tensor,
        gaps: torch.Tensor,
        padded: bool = True,
        **signals: torch.Tensor | None,
    ) -> torch.Tensor:
        """User vector (B, D): the state at each row's last real event (rows need >= 1 event, or a start
        token: a row of padding alone is then the user features' vector).

        ``padded=False`` promises rows without padding (all L events real), as one live history is: the state
        is then the final position's, with no mask (the same numbers, fewer nodes in an exported graph).
        ``signals``: ``queries`` (B, L, T), ``context`` (B, L, K), ``user_features`` (B, F)."""
        x = self.embed(items, events, dwell, gaps, **signals)  # (B, L', D)
        if not padded:  # every position real: the state is the final one's
            return self.encoder.forward_last(x, None, torch.ones_like(x[..., 0], dtype=torch.bool))  # (B, D)
        valid = self.valid(items)  # (B, L')
        last = (valid.sum(1) - 1).clamp_min(0)  # (B,)
        return self.encoder.forward_last(x, last, valid)  # (B, D): only the last position is needed


def _offsets(sizes: tuple[int, ...]) -> torch.Tensor:
    """(K,) start row of each column's block in one shared embedding table."""
    return torch.tensor([0, *sizes[:-1]]).cumsum(0)


SIGNALS = ("queries", "context", "user_features")  # optional model inputs, beside the four per-event ones


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The user-tower inputs of a collated batch: the four per-event tensors and any signal it carries.

    Every caller passes ``**model_inputs(batch)`` to ``encode_user`` / ``user_states``, so a new input needs no
    change to them."""
    return {name: batch[name] for name in ("items", "events", "dwell", "gaps", *SIGNALS) if name in batch}


class TwoTower(nn.Module):
    """Two towers in one space; ``score = <user, item> / temperature`` (cosine when ``normalize``).

    Built from a :class:`ModelConfig` (kept as ``self.config``, saved beside the weights so the model can be
    rebuilt from the artifact alone) and the (N + 1, C) item-category table, a buffer saved with the weights:
    None gives an all-zero table of the configured shape (a rebuild before ``load_state_dict``)."""

    def __init__(self, config: ModelConfig, item_categories: torch.Tensor | None = None) -> None:
        super().__init__()
        shape = (config.n_items + 1, config.max_categories)
        if item_categories is None:
            item_categories = torch.zeros(shape, dtype=torch.long)
        item_categories = torch.as_tensor(item_categories)
        if tuple(item_categories.shape) != shape:
            raise ValueError(f"item_categories is {tuple(item_categories.shape)}; the config says {shape}")
        self.config = config
        self.normalize = config.normalize
        self.item_tower = ItemTower(config.n_items, item_categories, config.n_categories, config.dim)
        self.user_tower = UserTower(self.item_tower, config)
        log_t = torch.tensor(float(config.temperature)).log()
        self.log_temperature = nn.Parameter(log_t, requires_grad=config.learn_temperature)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def _out(self, vectors: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return vectors
        return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize, one node fewer

    def user_states(self, items, events, dwell, gaps, **signals: torch.Tensor | None) -> torch.Tensor:
        """(B, L', D) output-space user vectors after every event (training); L' = 1 + L with a start token."""
        return self._out(self.user_tower.states(items, events, dwell, gaps, **signals))

    def encode_user(
        self,
        items: torch.Tensor,
        events: torch.Tensor,
        dwell: torch.Tensor,
        gaps: torch.Tensor,
        padded: bool = True,
        **signals: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, L) right-padded history -> (B, D) user vectors (``padded=False``: rows with no padding).
        ``signals``: ``queries`` (B, L, T), ``context`` (B, L, K), ``user_features`` (B, F) when the model reads them."""
        return self._out(self.user_tower(items, events, dwell, gaps, padded, **signals))

    def encode_items(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """(…) item indices (default: the whole catalog 1..N) -> (…, D) item vectors."""
        if items is None:
            items = torch.arange(1, self.config.n_items + 1, device=self.log_temperature.device)
        return self._out(self.item_tower(items))

    def encode_new_items(self, categories: torch.Tensor) -> torch.Tensor:
        """(M, C) category indices of items unseen in training -> (M, D) vectors from side features only."""
        return self._out(self.item_tower.encode_categories(categories))

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, D) x (N, D) -> (B, N) logits (scaling the smaller side by 1 / temperature)."""
        return (users / self.temperature) @ items.T
