""":class:`ModelConfig`: the constructor arguments of :class:`twotower.model.TwoTower`, saved with its weights.

One object for every place the model's shape is written down: the ``model.net`` config (catalog sizes added
from the data), ``model.pt``, a Lightning checkpoint's ``net_config`` and the ``model`` key of metrics.json
and of a bundle's manifest.json (all :meth:`ModelConfig.to_dict`). No torch here: a dict is enough to read one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Catalog sizes (from the data) and architecture. Field order is the order of the saved dict."""

    n_items: int  # items 1..N (0 = padding)
    n_categories: int = 1  # category vocabulary, 0 = none
    max_categories: int = 1  # categories per item: the width of the (N + 1, C) item-category table
    n_events: int = 1  # event types
    dim: int = 64
    max_len: int = 50  # history events the user tower reads (the last ones)
    encoder: str = "transformer"  # mean | gru | transformer (twotower.encoders.ENCODERS)
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    use_events: bool = True
    use_dwell: bool = True
    use_time: bool = True
    normalize: bool = False  # cosine scores (unit vectors) instead of inner products
    temperature: float = 1.0
    learn_temperature: bool = False
    # More signals (all off by default: a model without them has exactly the graph it always had).
    query_buckets: int = 0  # hashed query-token buckets (serving.core.texthash), 0 = the model reads no query
    max_query_tokens: int = 32  # query tokens one history position reads (padded with bucket 0)
    context_sizes: tuple[int, ...] = field(default=())  # per-event context columns' vocab sizes (0 = unknown)
    user_feature_sizes: tuple[int, ...] = field(default=())  # static user features' vocab sizes (0 = unknown)
    # Switches read when the sizes above are taken from the data (train.build_net): false leaves a signal the
    # data has unread, to measure with and without it on the same split.
    use_queries: bool = True
    use_context: bool = True
    use_user_features: bool = True

    def __post_init__(self) -> None:
        for name in ("context_sizes", "user_feature_sizes"):  # a JSON list reads back as the same tuple
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    @property
    def uses_start(self) -> bool:
        """The user tower opens every sequence with a user-feature token (features alone give a vector)."""
        return bool(self.user_feature_sizes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only: JSON-writable and loadable by ``torch.load(weights_only=True)``. The signal keys
        are written only when a signal is on, so a model without them saves the dict it always did."""
        out = asdict(self)
        for name in ("context_sizes", "user_feature_sizes"):
            out[name] = list(out[name])
        if not self.query_buckets:
            del out["query_buckets"], out["max_query_tokens"]
        for name in ("context_sizes", "user_feature_sizes"):
            if not out[name]:
                del out[name]
        for name in ("use_queries", "use_context", "use_user_features"):
            if out[name]:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> ModelConfig:
        """The inverse of :meth:`to_dict`; also reads the dicts of earlier runs (same keys). A missing key takes
        its default; an unknown key raises ValueError (a model of another shape must not load quietly)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; expected some of {sorted(names)}")
        return cls(**dict(mapping))
