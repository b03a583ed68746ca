"""The cold-start protocol: how well a model serves users it knows almost nothing about.

Each test user (leave-last-out) is cut to their first ``n`` events (n = 0, 1, 3 by default); the model reads
those events (and, when it reads them, the user's static features) and ranks the whole catalog for the user's
held-out test target, with the ``n`` events excluded. The target is never a training target, so nothing leaks;
the first events were training *inputs*, as any user's are (the model has no per-user parameter). Popularity
is ranked on the same queries, and, when the log has user features, popularity among the users who share each
feature (``profile_popularity``, its shrinkage picked on the validation queries cut to 0 events). A model without
user features has no vector for ``n = 0`` (it is not scored: it would serve the popularity fallback).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from twotower.artifacts import MODEL_FILE, load_model
from twotower.baselines import Popularity, ProfilePopularity, interaction_matrix
from twotower.data.sequences import EvalQueries, SequenceArrays
from twotower.evaluate import ModelScorer, best_on_validation, evaluate_scorer
from twotower.train import eval_context, load_data

log = logging.getLogger(__name__)
CUTS = (0, 1, 3)
KEYS = ("recall@10", "ndcg@10", "recall@100")
SHRINKS = (100.0, 1000.0, 10000.0)  # profile popularity's pseudo-events toward the global distribution


def cold_start(runs: dict[str, str | Path], cuts: tuple[int, ...] = CUTS) -> dict[str, Any]:
    """{cut: {name: metrics}} for each run (same data and split: the first run's config is read) and popularity."""
    first = Path(next(iter(runs.values())))
    cfg = OmegaConf.load(first / "config.yaml")
    data, split = load_data(cfg)
    common, _ = eval_context(cfg, data, split)
    arrays = SequenceArrays.from_log(data)
    models = {name: load_model(Path(run) / MODEL_FILE) for name, run in runs.items()}
    train = interaction_matrix(data, split)
    baselines: list = [Popularity(train)]
    out: dict[str, Any] = {"protocol": __doc__.split("\n\n")[1].replace("\n", " "), "cuts": {}}
    if data.user_features is not None and data.user_features.shape[1]:
        profile = _pick_profile_popularity(train, data, split, arrays, cfg.model.net.max_len, common)
        baselines.append(profile)
        out["profile_popularity_params"] = profile.params
    for cut in cuts:
        queries = EvalQueries(data, split, "test", arrays, cfg.model.net.max_len, first_events=cut)
        row = {
            b.name: _short(evaluate_scorer(b, queries, desc=f"{b.name} {cut}", **common)) for b in baselines
        }
        for name, net in models.items():
            if cut == 0 and not net.config.uses_start:
                row[name] = None  # no event and no features: the popularity fallback serves this user
                continue
            row[name] = _short(evaluate_scorer(ModelScorer(net), queries, desc=f"{name} {cut}", **common))
        out["cuts"][str(cut)] = row
        log.info("first %d events: %s", cut, row)
    return out


def _pick_profile_popularity(train, data, split, arrays, max_len: int, common: dict) -> ProfilePopularity:
    """Profile popularity with the shrinkage that ranks the validation targets best from the profile alone."""
    queries = EvalQueries(data, split, "val", arrays, max_len, first_events=0)
    grid = (ProfilePopularity(train, data.user_features, shrink=shrink) for shrink in SHRINKS)
    best, _ = best_on_validation(ProfilePopularity.name, grid, queries, **common)
    assert best is not None
    return best


def _short(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(metrics[k]), 4) for k in (*KEYS, "queries")}
