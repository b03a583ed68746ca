"""Accuracy against diversity, calibration and coverage over a sweep of each list knob, on a training run.

A run directory holds what it takes to rebuild the evaluation exactly: its ``config.yaml`` (the data and the
split), the model (``model.pt``). Each knob is swept with the others at the run's served default, through
:class:`twotower.served.ServedEvaluator`: the same code that reported the run's ``served`` metrics. This module
needs torch (it scores with the model); the simulator beside it does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from serving.core.listsettings import ListSettings
from twotower.artifacts import MODEL_FILE, load_model, train_counts
from twotower.data.sequences import EvalQueries
from twotower.datamodule import TwoTowerDataModule
from twotower.evaluate import ModelScorer
from twotower.export import rerank_settings
from twotower.served import ServedEvaluator
from twotower.train import eval_context, load_data

log = logging.getLogger(__name__)

KEEP = ("recall@10", "ndcg@10", "recall@100", "diversity@10", "coverage@10", "gini@10", "novelty@10",
        "miscalibration@10", "exposure_by_popularity_decile@10")  # fmt: skip


@dataclass
class RunEvaluation:
    """A training run's evaluation rebuilt: its served evaluator, its queries and its served default."""

    cfg: DictConfig
    evaluator: ServedEvaluator
    queries: dict[str, EvalQueries]
    served: ListSettings  # the list settings the run serves (picked on validation when ``auto``)


def load_run(run_dir: str | Path) -> RunEvaluation:
    """Rebuild a run's evaluation from ``config.yaml`` and ``model.pt`` (the raw log is read again)."""
    run = Path(run_dir)
    for name in ("config.yaml", MODEL_FILE):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run / name}: not found (is {run} a training run directory?)")
    cfg = OmegaConf.load(run / "config.yaml")
    data, split = load_data(cfg)
    datamodule: TwoTowerDataModule = hydra.utils.instantiate(cfg.datamodule, _partial_=True)(
        data=data, split=split, max_len=cfg.model.net.max_len
    )
    net = load_model(run / MODEL_FILE)
    common, _ = eval_context(cfg, data, split)
    evaluator = ServedEvaluator(
        cfg, data, ModelScorer(net), float(net.temperature), train_counts(data, split), common
    )
    queries = {
        "val": datamodule.queries("val"),
        "test": datamodule.queries("test", max_users=cfg.eval.test_max_users),
    }
    served = ListSettings.from_dict(rerank_settings(run, None)["list"])  # as export resolves `auto`
    return RunEvaluation(cfg, evaluator, queries, served)


def knob_sweep(
    run: RunEvaluation, grid: dict[str, list[Any]], split: str = "test", base: ListSettings | None = None
) -> dict[str, Any]:
    """Each knob of ``grid`` over its values, the others at ``base`` (default: all off), on ``split``; plus the
    served default as a reference point (the model alone is the run's ``metrics.json``)."""
    base = base if base is not None else ListSettings()
    queries = run.queries[split]
    out: dict[str, Any] = {"split": split, "base": base.as_dict(), "served_default": run.served.as_dict(),
                           "knobs": {}}  # fmt: skip
    out["served"] = _keep(run.evaluator(run.served, queries, "served default"))
    for knob, values in grid.items():
        points = []
        for value in values:
            settings = replace(base, **{knob: value})
            log.info("sweep %s=%s", knob, value)
            points.append({"value": value, **_keep(run.evaluator(settings, queries, f"{knob}={value}"))})
        out["knobs"][knob] = points
    return out


def _keep(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in KEEP if k in metrics}
