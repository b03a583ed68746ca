"""``logger=mlflow``: the run in MLflow beside TensorBoard and CSV.

Lightning's MLFlowLogger logs the per-epoch metrics; :func:`log_config` adds the resolved config as params
before training, and :func:`log_results` the final ``metrics.json`` values (numeric leaves, flattened to
``test/recall_at_10``-style names), ``metrics.json`` and ``config.yaml``, and the bundle when ``export=true``.
Without a tracking URI the run goes to a SQLite store under ``OUT/mlruns`` (MLflow 3 refuses the old
``./mlruns`` file store), its artifacts beside it in ``OUT/mlruns/artifacts``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, MLFlowLogger

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call


def metric_name(key: str) -> str:
    """A name MLflow accepts (alphanumerics, ``_ - . / : space``): ``@`` reads ``_at_``, anything else ``_``.
    (Lightning's own logger would drop the ``@`` and make ``recall@10`` ``recall10``.)"""
    return re.sub(r"[^\w./\- :]", "_", key.replace("@", "_at_"))


class MLflowLogger(MLFlowLogger):
    """MLFlowLogger with the project's defaults: ``tracking_uri=""`` stores the run in a SQLite file under
    ``save_dir`` (the run's ``OUT/mlruns``); any other URI (``http://host:5000``, ``sqlite:///...``) is used
    as given. Metric names are made MLflow-safe the same way for per-epoch and final values."""

    def __init__(
        self,
        tracking_uri: str = "",
        save_dir: str = "mlruns",
        experiment_name: str = "twotower",
        run_name: str | None = None,
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,
        log_model: bool = False,
    ) -> None:
        # MLflow 3 sends usage telemetry unless told not to (read when mlflow is first imported, just below):
        # training stays offline unless the user sets MLFLOW_DISABLE_TELEMETRY=false
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if not tracking_uri:
            local = Path(save_dir).resolve()
            local.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{local / 'mlflow.db'}"
            artifact_location = artifact_location or (local / "artifacts").as_uri()
        super().__init__(
            experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri, tags=tags,
            save_dir=save_dir, log_model=log_model, artifact_location=artifact_location,
        )  # fmt: skip
        self.last_step = 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None:
            self.last_step = max(self.last_step, int(step))
        super().log_metrics({metric_name(k): v for k, v in metrics.items()}, step)


def mlflow_loggers(loggers: Sequence[Logger]) -> list[MLFlowLogger]:
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger)]


def log_config(loggers: Sequence[Logger], cfg: DictConfig) -> None:
    """The resolved config as params (``model/net/dim`` ...), before training starts."""
    for logger in mlflow_loggers(loggers):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))


def numeric_leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(path, value)`` for each number in nested dicts and lists (booleans and strings left out)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from numeric_leaves(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from numeric_leaves(value, f"{prefix}/{i}")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield prefix, float(tree)


def log_results(loggers: Sequence[Logger], result: Mapping[str, Any]) -> None:
    """The final metrics (at the last training step, so that a per-epoch series such as ``val/ndcg_at_10``
    ends with the kept model's value), ``metrics.json`` and ``config.yaml``, and ``OUT/bundle`` if exported."""
    chosen = mlflow_loggers(loggers)
    if not chosen:
        return  # mlflow is an optional extra: a run without logger=mlflow never imports it
    from mlflow.entities import Metric

    for logger in chosen:
        client, run_id = logger.experiment, logger.run_id
        now = int(time.time() * 1000)
        step = getattr(logger, "last_step", 0)
        metrics = [Metric(metric_name(k), v, now, step) for k, v in numeric_leaves(result["metrics"])
                   if math.isfinite(v)]  # fmt: skip
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])
        out = Path(result["output_dir"])
        for name in ("metrics.json", "config.yaml"):
            if (out / name).exists():
                client.log_artifact(run_id, str(out / name))
        if result.get("bundle"):
            client.log_artifacts(run_id, result["bundle"], "bundle")
        log.info("MLflow run %s: %d metrics at %s", run_id, len(metrics), logger._tracking_uri)
        close_store(client)


def close_store(client: Any) -> None:
    """Close the client's pooled database connections: MLflow keeps an engine per URI for the life of the
    process, which would hold a finished run's SQLite file open (sweeps and tests run many in one process)."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)  # no public handle for this
    engine = getattr(store, "engine", None)
    if engine is not None:
        engine.dispose()
