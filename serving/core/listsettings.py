"""The list re-rank's knobs: what a request, a manifest or a config may set, and their ranges.

Each knob has a value that switches it off (0); all off is the plain top-k by score. The re-rank that reads
them is :func:`serving.core.diversify.rerank_list`. No torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

KNOBS = ("diversity", "max_per_category", "calibrate", "explore")  # what a request may set
KNOBS_OFF = {"diversity": 0.0, "max_per_category": 0, "calibrate": 0.0, "explore": 0.0}  # the plain top-k


def check_knob(name: str, value: Any) -> None:
    """A ValueError naming the knob when ``value`` is out of its range (shares in [0, 1], counts >= 0)."""
    if name in ("diversity", "calibrate", "explore"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "depth" else 0):
        raise ValueError(f"{name} must be an integer >= {1 if name == 'depth' else 0}, got {value!r}")


@dataclass(frozen=True)
class ListSettings:
    """The list re-rank's knobs (each has a value that switches it off: 0)."""

    diversity: float = 0.0  # 0..1: weight of dissimilarity to the items already chosen (MMR)
    max_per_category: int = 0  # at most this many items per category (0 = no cap)
    calibrate: float = 0.0  # 0..1: weight of the list's category mix matching the history's (Steck)
    explore: float = 0.0  # 0..1: share of slots for items outside the usual categories or the head
    depth: int = 100  # candidates fetched by score when any knob is on (at least k)

    def __post_init__(self) -> None:
        for name in ("diversity", "max_per_category", "calibrate", "explore", "depth"):
            check_knob(name, getattr(self, name))

    @property
    def active(self) -> bool:
        """Whether any knob changes the plain top-k."""
        return bool(self.diversity or self.max_per_category or self.calibrate or self.explore)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ListSettings:
        """From a manifest or config section (unknown keys ignored, ``None`` values left at the default)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in names and v is not None})

    def with_overrides(self, **values: Any) -> ListSettings:
        """These settings with the given knobs replaced (``None``: keep this one)."""
        given = {k: v for k, v in values.items() if v is not None and v != getattr(self, k)}
        return replace(self, **given) if given else self

    def for_request(self, request: Any) -> ListSettings:
        """These defaults with the knobs a request sets (its ``KNOBS`` attributes that are not None); a request
        with ``rerank=False`` starts from every knob off (the model's ranking alone) instead."""
        r = request
        base = self if getattr(r, "rerank", True) else self.off()
        if r.diversity is None and r.max_per_category is None and r.calibrate is None and r.explore is None:
            return base
        return base.with_overrides(**{name: getattr(r, name) for name in KNOBS})

    def off(self) -> ListSettings:
        """Every knob off (``depth`` kept): the plain top-k by score."""
        return replace(self, **KNOBS_OFF)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
