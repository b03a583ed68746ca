"""``logger=mlflow``: a tiny run is read back through MLflow's API, with its params (the resolved config),
per-epoch metrics, the final metrics.json values and the exported bundle; TensorBoard and CSV stay."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.utils import instantiate
from mlflow import MlflowClient

from tests.conftest import FAST_TRAIN, TINY_DATA, compose_config
from twotower.tracking import MLflowLogger, metric_name, numeric_leaves
from twotower.train import train


def test_metric_names_and_numeric_leaves():
    assert metric_name("test/recall@10") == "test/recall_at_10" and metric_name("a(b)%") == "a_b__"
    tree = {"test": {"recall@10": 0.5, "name": "x", "ok": True}, "deciles": [1, 2.5], "n": 3}
    assert dict(numeric_leaves(tree)) == {"test/recall@10": 0.5, "deciles/0": 1.0, "deciles/1": 2.5, "n": 3.0}


def test_a_tracking_uri_is_used_as_given(tmp_path):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    logger = MLflowLogger(tracking_uri=uri, save_dir=str(tmp_path / "unused"))
    assert logger._tracking_uri == uri and not (tmp_path / "unused").exists()


def test_a_tiny_run_is_readable_through_mlflow(tmp_path, monkeypatch):
    # MLflow sets the variable itself during the run: set and removed here, it is unset again afterwards
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unused")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    overrides = [o for o in FAST_TRAIN if not o.startswith("logger=")]
    overrides += ["logger=mlflow", "export=true", "index=flat", "eval.baselines=[popularity,ease]"]
    cfg = compose_config(TINY_DATA + overrides, tmp_path / "run")
    result = train(cfg)
    out = Path(result["output_dir"])
    assert (out / "csv").is_dir() and (out / "tensorboard").is_dir()  # the default loggers stay

    client = MlflowClient(f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("twotower").experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model/net/dim"] == "16" and params["trainer/max_epochs"] == "2"
    assert params["paths/output_dir"] == str(tmp_path / "run") and params["seed"] == str(cfg.seed)

    metrics, saved = run.data.metrics, json.loads((out / "metrics.json").read_text())
    for key in ("test/recall@10", "test/ndcg@10", "served/test/recall@10", "baselines/ease/recall@10",
                "baselines/popularity/mrr", "val/ndcg@10", "dataset/users"):  # fmt: skip
        value = saved
        for part in key.split("/"):
            value = value[part]
        assert metrics[metric_name(key)] == value, key
    # per epoch (Lightning): one value each, then the kept model's final value at the last step
    history = client.get_metric_history(run.info.run_id, "val/ndcg_at_10")
    assert len(history) == 3 and history[-1].value == saved["val"]["ndcg@10"]
    assert len(client.get_metric_history(run.info.run_id, "train/loss_epoch")) == 2

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"bundle", "metrics.json", "config.yaml"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "bundle", str(tmp_path / "download")))
    for name in ("manifest.json", "item_ids.json"):
        assert (local / name).read_bytes() == (Path(result["bundle"]) / name).read_bytes()

    # the next run in this process (a sweep) gets its own store, though MLflow left the variable set
    assert "MLFLOW_TRACKING_URI" in os.environ
    following = compose_config(TINY_DATA + overrides, tmp_path / "next")
    logger = instantiate(following.logger.mlflow)
    assert logger._tracking_uri == f"sqlite:///{tmp_path / 'next' / 'mlruns' / 'mlflow.db'}"


def test_a_run_without_mlflow_logger_never_imports_mlflow(tmp_path, monkeypatch):
    """mlflow is an optional extra (the CUDA image of the GPU check lacks it): a run logging to CSV alone must
    finish its results without importing it."""
    import sys

    from pytorch_lightning.loggers import CSVLogger

    from twotower.tracking import log_results

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow...` now raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    log_results([CSVLogger(str(tmp_path))], {"metrics": {"recall@10": 0.5}, "output_dir": str(tmp_path)})
