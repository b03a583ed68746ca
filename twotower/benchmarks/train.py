"""Training and evaluation throughput of one experiment (``scripts/bench_train.py``): train as
:func:`twotower.train.train` does (timing each fit epoch and its validation apart), then evaluate the same model
on the same test queries with the torch ranker and its numpy twin, on the same device's scores.

Writes ``bench_train.json``: ``machine``, ``device``, ``train_targets_per_s``, ``epoch_seconds`` and
``validation_seconds`` (means over the fit's epochs, validation excluded from the epoch), ``eval`` with
``torch`` and ``numpy`` (``users_per_s`` and the ``metrics``, which must be equal), and beside them the run's
own figures (the full-protocol test metrics, wall seconds).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from twotower.artifacts import load_model
from twotower.benchmarks.profiling import first_queries, profile_evaluation, synchronize
from twotower.evaluate import ModelScorer, evaluate_scorer
from twotower.train import eval_context, train

log = logging.getLogger(__name__)
RANKERS = ("torch", "numpy")


class EpochTimer(pl.Callback):
    """Wall seconds of each fit epoch's training and of its validation, apart; keeps the datamodule."""

    def __init__(self) -> None:
        self.train_seconds: list[float] = []
        self.validation_seconds: list[float] = []
        self.datamodule: Any = None
        self._epoch_start = self._val_start = 0.0
        self._val_this_epoch = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize()
        self._epoch_start, self._val_this_epoch = time.perf_counter(), 0.0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        synchronize()
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        synchronize()
        seconds = time.perf_counter() - self._val_start
        self.validation_seconds.append(seconds)
        self._val_this_epoch += seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates inside the training epoch (before this hook): its time is taken out
        synchronize()
        self.train_seconds.append(time.perf_counter() - self._epoch_start - self._val_this_epoch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.datamodule = trainer.datamodule


def machine() -> dict[str, Any]:
    """The CPU, cores, the GPU (if any) and the versions; no FAISS or ONNX Runtime needed."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__}  # fmt: skip


def compare_rankers(
    cfg: DictConfig, scorer: ModelScorer, queries: Any, common: dict[str, Any], warmup_users: int = 256
) -> dict[str, dict[str, Any]]:
    """Each ranker's users/s and metrics on the same queries and the same scorer (after a short warm-up)."""
    out: dict[str, dict[str, Any]] = {}
    for ranker in RANKERS:
        settings = {**common, "ranker": ranker}
        evaluate_scorer(scorer, first_queries(queries, warmup_users), desc=f"warm-up {ranker}", **settings)
        out[ranker] = timed_evaluation(scorer, queries, settings, desc=f"eval {ranker}")
    return out


def timed_evaluation(
    scorer: ModelScorer, queries: Any, settings: dict[str, Any], desc: str
) -> dict[str, Any]:
    """One :func:`evaluate_scorer` call, timed from its start (the loader's workers included) to the device's
    last result: ``users_per_s``, ``seconds``, ``metrics``."""
    synchronize()
    start = time.perf_counter()
    metrics = evaluate_scorer(scorer, queries, desc=desc, **settings)
    synchronize()
    seconds = time.perf_counter() - start
    return {"users_per_s": len(queries) / seconds, "seconds": seconds, "metrics": metrics}


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two metrics dicts (NaN equal to NaN)."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if not (k in a and k in b and (a[k] == b[k] or _both_nan(a[k], b[k])))]


def _both_nan(x: Any, y: Any) -> bool:
    return isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y)


def run_bench_train(
    cfg: DictConfig,
    eval_users: int | None = 10000,
    callbacks: tuple[pl.Callback, ...] = (),
    profile_eval_batches: int = 0,
) -> dict[str, Any]:
    """Train ``cfg`` (a composed training config), time it, and compare the two rankers on ``eval_users``
    test queries (None: every test user). Returns what ``bench_train.json`` holds; with
    ``profile_eval_batches`` > 0 also ``eval_profile``, the torch ranker's profile over that many batches of
    every user (:func:`~twotower.benchmarks.profiling.profile_evaluation`). ``callbacks``: added to the fit
    (a :class:`~twotower.benchmarks.profiling.FitProfile`)."""
    timer = EpochTimer()
    start = time.perf_counter()
    result = train(cfg, extra_callbacks=[timer, *callbacks])
    run_seconds = time.perf_counter() - start
    run_metrics = result["metrics"]
    device = torch.device(run_metrics["device"])
    datamodule = timer.datamodule
    if not timer.train_seconds or datamodule is None:
        raise RuntimeError("the fit ran no epoch: nothing to time")
    data, split = datamodule.data, datamodule.split
    common, _ = eval_context(cfg, data, split)
    queries = datamodule.queries("test", max_users=eval_users)
    scorer = ModelScorer(load_model(result["model"]).to(device).eval(), device)
    rankers = compare_rankers(cfg, scorer, queries, common)
    everyone = datamodule.queries("test")  # the full protocol, every test user, on the torch ranker alone
    full = (
        rankers["torch"]
        if len(everyone) == len(queries)
        else timed_evaluation(scorer, everyone, {**common, "ranker": "torch"}, desc="eval torch, every user")
    )
    diff = differing(rankers["torch"]["metrics"], rankers["numpy"]["metrics"])
    profiled = {}
    if profile_eval_batches > 0:
        settings = {**common, "ranker": "torch"}
        profiled["eval_profile"] = profile_evaluation(scorer, everyone, settings, profile_eval_batches)
    epoch_seconds = float(np.mean(timer.train_seconds))
    # a profiled epoch (FitProfile) runs slower: the figure without it beside the mean over all
    slowed = sorted(set().union(*(getattr(c, "epochs", set()) for c in callbacks)))
    clean = [s for epoch, s in enumerate(timer.train_seconds) if epoch not in slowed]
    validation_seconds = float(np.mean(timer.validation_seconds)) if timer.validation_seconds else 0.0
    return {
        "machine": machine(),
        "device": str(device),
        "train_targets_per_s": datamodule.train_set.n_targets / epoch_seconds,
        "profiled_epochs": slowed,
        "train_targets_per_s_unprofiled": datamodule.train_set.n_targets / float(np.mean(clean))
        if clean
        else None,
        "epoch_seconds": epoch_seconds,
        "validation_seconds": validation_seconds,
        "eval": {
            name: {"users_per_s": r["users_per_s"], "metrics": r["metrics"]} for name, r in rankers.items()
        },
        "eval_all_users": {
            "users": len(everyone),
            "users_per_s": full["users_per_s"],
            "seconds": full["seconds"],
        },
        "eval_agree": not diff,
        "eval_differing_keys": diff,
        "eval_users": len(queries),
        "eval_seconds": {name: r["seconds"] for name, r in rankers.items()},
        "torch_over_numpy_users_per_s": rankers["torch"]["users_per_s"] / rankers["numpy"]["users_per_s"],
        "validation_share_of_epoch": validation_seconds / (epoch_seconds + validation_seconds),
        "epochs": len(timer.train_seconds),
        "epoch_train_seconds_each": timer.train_seconds,
        "validation_seconds_each": timer.validation_seconds,
        "train_targets_per_epoch": datamodule.train_set.n_targets,
        "precision": run_metrics["precision"],
        "run_seconds": run_seconds,  # data, training, the full evaluation and the baselines (train())
        "train_seconds": run_metrics["train_seconds"],
        "dataset": run_metrics["dataset"],
        "test": {k: run_metrics["test"][k] for k in ("recall@10", "ndcg@10", "recall@100", "queries")},
        "baselines_test_recall@10": {n: m["recall@10"] for n, m in run_metrics["baselines"].items()},
        "output_dir": result["output_dir"],
        **profiled,
    }
