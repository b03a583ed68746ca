""":class:`ModelConfig`: the constructor arguments of :class:`twotower.model.TwoTower`, saved with its weights.

One object for every place the model's shape is written down: the ``model.net`` config (catalog sizes added
from the data), ``model.pt``, a Lightning checkpoint's ``net_config`` and the ``model`` key of metrics.json
and of a bundle's manifest.json (all :meth:`ModelConfig.to_dict`). No torch here: a dict is enough to read one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
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

    def to_dict(self) -> dict[str, Any]:
        """Plain types only: JSON-writable and loadable by ``torch.load(weights_only=True)``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> ModelConfig:
        """The inverse of :meth:`to_dict`; also reads the dicts of earlier runs (same keys). A missing key takes
        its default; an unknown key raises ValueError (a model of another shape must not load quietly)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; expected some of {sorted(names)}")
        return cls(**dict(mapping))
