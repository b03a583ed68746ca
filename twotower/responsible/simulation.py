"""The feedback-loop simulator: does a recommendation policy narrow what people consume when its own output
feeds its next input?

Semantics (also in docs/responsible.md):

- **Users.** ``users`` users are drawn (seeded, without replacement) from the bundle's stored histories among
  those with at least ``min_events`` events. Each starts from a real *prefix*: the first ``prefix_share`` of
  their stored events, at most ``max_prefix`` (events, event types and dwell as stored; times shifted so the
  prefix ends just before the simulation, gaps kept).
- **The serving path.** Per policy, a fresh :class:`~serving.live.LiveService` over an empty
  :class:`~serving.store.SQLiteHistoryStore` in a temporary directory (window: the model's ``max_len`` + 1,
  the service's default) is seeded with the prefixes as live events (``live.ingest``). Each round every user
  gets ``k`` items from ``live.recommend(user_id=..., k=k, **policy_fields)``: their stored history is read,
  seen items are excluded, the policy's knobs applied.
- **The oracle and the choice.** An EASE model (closed form, ``l2``) fitted on all of the bundle's stored
  histories, which did not make the recommendations, scores every item for the user's simulated history so far
  (prefix + consumed). The user consumes one offered item drawn from a multinomial logit over the oracle scores
  of the ``k`` offered items, ``p_i ~ exp(s_i / (temperature * sd_u))``, ``sd_u`` the standard deviation of the
  user's scores over the catalog. The draw for (user, round) uses the same random number under every policy.
- **Feedback.** The consumed item goes back as a live event (type ``event``; ``auto``: the most common type
  in the stored histories), ``step_s`` seconds after the previous one, through ``live.ingest``.
- **Measures** (:mod:`twotower.responsible.measures`): ``entropy[r]`` is the mean over users of the entropy
  (bits) of the category mix of their most recent ``window`` events after ``r`` rounds (``entropy[0]``: the
  prefixes, the users' starting entropy; ``R + 1`` values); ``long_tail_share[r - 1]`` the share of round
  ``r``'s consumed items in the long tail (outside the head holding ``head_share`` of training
  interactions); ``utility[r - 1]`` the mean oracle score of round ``r``'s consumed items
  (``utility_percentile``: the share of the items the user has not consumed that the oracle scores lower).

Policies are request-field overrides; fields ``RecommendationRequest`` lacks are dropped when they ask for the
off value (0, False, None), and the policy is skipped when they ask for more. Deterministic under ``seed``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.core.listsettings import KNOBS_OFF
from serving.core.request import RecommendationRequest
from serving.live import LiveService
from serving.recommender import Recommender
from serving.store import SQLiteHistoryStore
from twotower.responsible.measures import category_weights, recent_entropy, tail_mask
from twotower.responsible.oracle import EaseOracle, choose

log = logging.getLogger(__name__)

POLICIES: dict[str, dict[str, Any]] = {
    "model": {"rerank": False, **KNOBS_OFF},
    "served": {},
    "diversity": {"diversity": 0.7},
    "explore": {"explore": 0.2},
    "calibrate": {"calibrate": 0.5},
}


@dataclass(frozen=True)
class SimulationConfig:
    users: int = 200
    rounds: int = 20
    k: int = 10
    seed: int = 0
    prefix_share: float = 0.5  # the first half of a user's stored events ...
    max_prefix: int = 20  # ... at most this many
    min_events: int = 6  # users with fewer stored events are not drawn
    temperature: float = 1.0  # choice-model temperature, in standard deviations of the user's oracle scores
    window: int = 20  # recent events the entropy reads
    head_share: float = 0.8  # the head holds this share of training interactions; the rest is the tail
    l2: float = 500.0  # EASE regularisation
    event: str | None = "auto"  # event type of a consumption (auto: the commonest in the stored histories)
    step_s: float = 600.0  # seconds between a user's consecutive simulated events


@dataclass
class SimUser:
    user_id: str
    prefix: list[dict]  # live events (item_id, event, dwell_s, ts offset from the prefix's last event)
    rows: list[int]  # catalog rows of the prefix, oldest first


def sample_users(rec: Recommender, cfg: SimulationConfig) -> list[SimUser]:
    """``cfg.users`` users (seeded) with at least ``cfg.min_events`` stored events, and their prefixes."""
    frame, row_of = rec.bundle.histories, rec.catalog.row_of
    frame = frame[frame["item_id"].astype(str).isin(row_of)]
    groups = dict(list(frame.groupby(frame["user_id"].astype(str), sort=True)))
    eligible = [u for u, g in groups.items() if len(g) >= cfg.min_events]
    if not eligible:
        raise ValueError(f"no stored history has {cfg.min_events} events")
    rng = np.random.default_rng(cfg.seed)
    chosen = sorted(rng.choice(len(eligible), size=min(cfg.users, len(eligible)), replace=False).tolist())
    users = []
    for index in chosen:
        user = eligible[index]
        g = groups[user]
        n = min(max(1, int(len(g) * cfg.prefix_share)), cfg.max_prefix)
        g = g.iloc[:n]
        ts = g["ts"].to_numpy(np.float64) if "ts" in g else np.full(n, np.nan)  # (n,)
        if not np.isfinite(ts).all():  # no times: one step apart
            ts = np.arange(n, dtype=np.float64) * cfg.step_s
        ts = ts - ts[-1]
        dwell = g["dwell_s"].to_numpy(np.float64) if "dwell_s" in g else np.full(n, np.nan)
        events = g["event"].tolist() if "event" in g else [None] * n
        prefix = [{"user_id": user, "item_id": str(i), "event": e, "ts": float(t),
                   "dwell_s": float(d) if math.isfinite(d) and d >= 0 else None}
                  for i, e, d, t in zip(g["item_id"], events, dwell, ts, strict=True)]  # fmt: skip
        users.append(SimUser(user, prefix, [row_of[str(i)] for i in g["item_id"]]))
    return users


def policy_fields(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], str | None]:
    """(the overrides this RecommendationRequest accepts, the off-valued fields it lacks, why the policy is
    skipped or None)."""
    known = {f.name for f in dataclasses.fields(RecommendationRequest)}
    missing = [name for name in fields if name not in known]
    wanted = [name for name in missing if fields[name] not in (0, False, None)]
    if wanted:
        return {}, missing, f"RecommendationRequest has no field {', '.join(wanted)}"
    return {k: v for k, v in fields.items() if k in known}, missing, None


def consumption_event(rec: Recommender, event: str | None) -> str | None:
    if event != "auto":
        return event
    column = rec.bundle.histories.get("event")
    counts = Counter(column.dropna().astype(str)) if column is not None else Counter()
    return counts.most_common(1)[0][0] if counts else None


class Simulation:
    """The users, oracle and measures shared by every policy of one run."""

    def __init__(self, rec: Recommender, cfg: SimulationConfig, oracle: EaseOracle | None = None) -> None:
        self.rec, self.cfg = rec, cfg
        self.users = sample_users(rec, cfg)
        self.oracle = oracle or EaseOracle.fit(rec.bundle.histories, rec.bundle.item_ids, cfg.l2)
        self.weights = category_weights(rec.bundle.items, rec.bundle.categories)  # (N, C)
        counts = rec.bundle.items.get("train_count")
        self.tail = tail_mask(np.zeros(len(rec.bundle.item_ids)) if counts is None else counts.to_numpy(),
                              cfg.head_share)  # fmt: skip  # (N,)
        self.row_of = {item: row for row, item in enumerate(rec.bundle.item_ids)}
        self.event = consumption_event(rec, cfg.event)
        self.seeded = "seed" in {f.name for f in dataclasses.fields(RecommendationRequest)}

    def entropy(self, histories: list[list[int]]) -> float:
        return float(np.mean([recent_entropy(h, self.weights, self.cfg.window) for h in histories]))

    def request_seed(self, round_: int, user: int) -> int:
        return (self.cfg.seed * 1_000_003 + round_ * 100_003 + user) % 2**31

    def run_policy(self, fields: Mapping[str, Any], trace: bool = False) -> dict[str, Any]:
        """One policy's R rounds through a fresh LiveService; its figures (and, with ``trace``, per round the
        offered and consumed ids and each user's stored history length)."""
        cfg, rec, users = self.cfg, self.rec, self.users
        started = time.perf_counter()
        t0 = time.time() - (cfg.rounds + 1) * cfg.step_s - 60.0  # the prefixes end here; rounds follow
        histories = [list(u.rows) for u in users]  # catalog rows, the whole simulated history
        out: dict[str, Any] = {"entropy": [self.entropy(histories)], "long_tail_share": [], "utility": [],
                               "utility_percentile": [], "settings": dict(fields)}  # fmt: skip
        sources: Counter[str] = Counter()
        rounds_trace = []
        with tempfile.TemporaryDirectory(prefix="twotower-simulate-") as state:
            live = LiveService(rec, SQLiteHistoryStore(state, max_events=rec.max_len + 1))
            live.ingest([{**e, "ts": t0 + e["ts"]} for u in users for e in u.prefix])
            for r in range(1, cfg.rounds + 1):
                offered = []
                for i, user in enumerate(users):
                    extra = {"seed": self.request_seed(r, i)} if self.seeded else {}
                    result = live.recommend(user_id=user.user_id, k=cfg.k, **fields, **extra)
                    sources[result.source] += 1
                    offered.append([x["item_id"] for x in result.items])
                scores = self.oracle.scores(histories)  # (U, N)
                spread = scores.std(axis=1)  # (U,)
                consumed, utility, percentile, tail = [], [], [], []
                for i, ids in enumerate(offered):
                    if not ids:  # nothing offered: nothing consumed this round
                        consumed.append(None)
                        continue
                    rows = np.array([self.row_of[x] for x in ids])  # (k,)
                    rng = np.random.default_rng([cfg.seed, r, i])  # the same draw under every policy
                    row = int(rows[choose(scores[i, rows], float(spread[i]), cfg.temperature, rng)])
                    unseen = np.ones(scores.shape[1], dtype=bool)  # (N,)
                    unseen[histories[i]] = False
                    utility.append(float(scores[i, row]))
                    percentile.append(float((scores[i, unseen] < scores[i, row]).mean()))
                    tail.append(bool(self.tail[row]))
                    histories[i].append(row)
                    consumed.append(ids[list(rows).index(row)])
                live.ingest([{"user_id": u.user_id, "item_id": c, "event": self.event, "dwell_s": None,
                              "ts": t0 + r * cfg.step_s} for u, c in zip(users, consumed, strict=True)
                             if c is not None])  # fmt: skip
                out["entropy"].append(self.entropy(histories))
                out["long_tail_share"].append(float(np.mean(tail)) if tail else float("nan"))
                out["utility"].append(float(np.mean(utility)) if utility else float("nan"))
                out["utility_percentile"].append(float(np.mean(percentile)) if percentile else float("nan"))
                if trace:
                    stored = [len(live.user_events(u.user_id)) for u in users]
                    rounds_trace.append({"offered": offered, "consumed": consumed, "stored": stored})
            live.store.close()
        out["distinct_items"] = len(
            {row for h, u in zip(histories, users, strict=True) for row in h[len(u.rows) :]}
        )
        out["entropy_end_users"] = [recent_entropy(h, self.weights, cfg.window) for h in histories]
        out["sources"] = dict(sources)
        out["seconds"] = round(time.perf_counter() - started, 2)
        if trace:
            out["trace"] = rounds_trace
        return out


def run_simulation(
    rec: Recommender,
    cfg: SimulationConfig,
    policies: Mapping[str, Mapping[str, Any]] | None = None,
    trace: bool = False,
) -> dict[str, Any]:
    """Every policy over the same users, oracle and random draws: the ``simulation.json`` document."""
    started = time.perf_counter()
    sim = Simulation(rec, cfg)
    result: dict[str, Any] = {
        "rounds": cfg.rounds, "users": len(sim.users), "oracle": sim.oracle.description,
        "config": dataclasses.asdict(cfg), "consumption_event": sim.event, "model_version": rec.model_version,
        "served_defaults": served_defaults(rec), "tail_items": int(sim.tail.sum()),
        "catalog_items": len(sim.tail), "policies": {},
    }  # fmt: skip
    prefix_rows = np.array([row for u in sim.users for row in u.rows])
    result["starting_long_tail_share"] = float(sim.tail[prefix_rows].mean())
    for name, fields in (POLICIES if policies is None else policies).items():
        overrides, missing, skipped = policy_fields(fields)
        if skipped:
            log.warning("policy %s skipped: %s", name, skipped)
            result["policies"][name] = {"skipped": skipped, "settings": dict(fields)}
            continue
        log.info("policy %s: %s", name, overrides)
        figures = sim.run_policy(overrides, trace)
        if missing:
            figures["unsupported_fields"] = missing
        result["policies"][name] = figures
    result["starting_entropy"] = next(
        (p["entropy"][0] for p in result["policies"].values() if "entropy" in p), None
    )
    result["targets"] = targets(result)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def served_defaults(rec: Recommender) -> dict[str, Any]:
    """The re-rank settings a request without overrides gets: the session intent's, and the list re-rank's
    when this serving version has one."""
    out: dict[str, Any] = {}
    for name, settings in (
        ("intent", getattr(rec.intent, "settings", None)),
        ("list", getattr(rec, "ranking", None)),
    ):
        if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
            out[name] = dataclasses.asdict(settings)
    return out


def summary(figures: Mapping[str, Any], model: Mapping[str, Any] | None) -> dict[str, float]:
    """Start and end entropy (with the standard error over users), mean tail share and utility; ratios to the
    model-only policy when it ran (and the paired standard error of the end-entropy difference)."""
    out = {"entropy_start": figures["entropy"][0], "entropy_end": figures["entropy"][-1],
           "entropy_end_vs_start": _ratio(figures["entropy"][-1], figures["entropy"][0]),
           "long_tail_share": float(np.nanmean(figures["long_tail_share"])),
           "utility": float(np.nanmean(figures["utility"])),
           "utility_percentile": float(np.nanmean(figures["utility_percentile"]))}  # fmt: skip
    finals = np.asarray(figures["entropy_end_users"])  # (U,) each user's entropy after the last round
    out["entropy_end_se"] = _se(finals)
    if model is not None and "entropy" in model:
        out["entropy_end_vs_model"] = _ratio(figures["entropy"][-1], model["entropy"][-1])
        # the same users and random draws under every policy: a paired difference
        out["entropy_end_minus_model_se"] = _se(finals - np.asarray(model["entropy_end_users"]))
        out["utility_vs_model"] = _ratio(out["utility"], float(np.nanmean(model["utility"])))
    return out


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Adds each policy's ``summary``; returns the issue's checks of the served default against the model."""
    policies = result["policies"]
    model = policies.get("model")
    for figures in policies.values():
        if "entropy" in figures:
            figures["summary"] = summary(figures, model)
    for figures in policies.values():
        figures.pop("entropy_end_users", None)
    served = policies.get("served", {}).get("summary")
    if served is None or model is None or "entropy" not in model:
        return {}
    return {
        "served_entropy_end >= 0.8 x start": served["entropy_end_vs_start"] >= 0.8,
        "served_entropy_end >= model's": served["entropy_end"] >= model["entropy"][-1],
        "served_utility >= 0.95 x model's": served["utility_vs_model"] >= 0.95,
    }


def _se(values: np.ndarray) -> float:
    """Standard error of the mean (nan below two values)."""
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")
