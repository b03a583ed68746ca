"""What each list knob and explanations add to a recommendation's latency, measured in one process.

The same stored users are recommended under every setting in interleaved rounds (setting A's pass, then B's,
... then A's again), so a drift of the machine's speed during the run falls on all settings alike; each
setting's p50 and p99 are taken over all its requests, and reported as ratios to the baseline's (the served
ranking with every knob off). Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serving.recommender import Recommender

SETTINGS: dict[str, dict[str, Any]] = {
    "baseline": {"diversity": 0.0, "max_per_category": 0, "calibrate": 0.0, "explore": 0.0},
    "served_default": {},
    "diversity": {"diversity": 0.7, "max_per_category": 0, "calibrate": 0.0, "explore": 0.0},
    "max_per_category": {"diversity": 0.0, "max_per_category": 3, "calibrate": 0.0, "explore": 0.0},
    "calibrate": {"diversity": 0.0, "max_per_category": 0, "calibrate": 0.5, "explore": 0.0},
    "explore": {"diversity": 0.0, "max_per_category": 0, "calibrate": 0.0, "explore": 0.2},
    "explain": {"diversity": 0.0, "max_per_category": 0, "calibrate": 0.0, "explore": 0.0, "explain": True},
}


def knob_costs(
    rec: Recommender,
    users: Sequence[str],
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    rounds: int = 5,
    k: int = 10,
) -> dict[str, Any]:
    """p50 / p99 (ms) of ``rec.recommend(user_id=u, k=k, **fields)`` per named setting, and each p50 as a ratio
    to the ``baseline`` setting's."""
    settings = dict(settings or SETTINGS)
    if "baseline" not in settings:
        raise ValueError("settings need a 'baseline' entry (the ratios are to it)")
    for fields in settings.values():  # warm caches and fail on a bad setting before timing anything
        rec.recommend(user_id=users[0], k=k, **fields)
    times: dict[str, list[float]] = {name: [] for name in settings}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, fields in settings.items():
            out = times[name]
            for user in users:
                start = clock()
                rec.recommend(user_id=user, k=k, **fields)
                out.append(clock() - start)
    result: dict[str, Any] = {"k": k, "users": len(users), "rounds": rounds, "settings": {}}
    base = float(np.percentile(times["baseline"], 50))
    for name, fields in settings.items():
        p50, p99 = (float(np.percentile(times[name], q)) for q in (50, 99))
        result["settings"][name] = {"fields": dict(fields), "p50_ms": round(p50 * 1e3, 4),
                                    "p99_ms": round(p99 * 1e3, 4), "p50_ratio": round(p50 / base, 3)}  # fmt: skip
    return result
