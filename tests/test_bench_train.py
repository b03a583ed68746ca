"""scripts/bench_train.py: the JSON contract, the two rankers' agreement, and experiment=scale shrunk on CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import FAST_TRAIN, ML100K, TINY_DATA
from twotower.benchmarks.profiling import FitProfile
from twotower.benchmarks.train import differing, run_bench_train
from twotower.config import CONFIG_DIR, PROJECT_ROOT

ML100K_FOUND = (ML100K / "u.data").exists()
KEYS = {"machine", "device", "train_targets_per_s", "epoch_seconds", "validation_seconds", "eval"}


def bench_config(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("bench_train", overrides=overrides)


def test_bench_train_on_scale_shrunk_writes_the_contract(tmp_path):
    """experiment=scale, shrunk by overrides (its sampled softmax, its settings), runs on CPU; the torch ranker
    and its numpy twin give the same metrics on the same model and queries. The fit's steps and the every-user
    evaluation are profiled beside it."""
    shrink = ["data.loader.n_users=150", "data.loader.n_items=400", "data.loader.mean_events=12",
              "model.net.dim=16", "model.loss.num_uniform_negatives=64", "datamodule.batch_size=64",
              "datamodule.val_max_users=50", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
              "logger=csv", "eval_users=100", "eval.max_batch_scores=3200", "eval.batch_size=64"]  # fmt: skip
    cfg = bench_config(["experiment=scale", f"out={tmp_path}", *shrink])
    assert cfg.paths.output_dir == f"{tmp_path}/run" and cfg.model.loss.mode == "sampled"
    fit = FitProfile(start=1, steps=1, traced=1)
    result = run_bench_train(cfg, eval_users=cfg.eval_users, callbacks=(fit,), profile_eval_batches=2)
    assert fit.text is not None and fit.text.startswith("1 steps of the Lightning fit on cpu (32-true)")
    assert all(f"fit: {phase}" in fit.text for phase in ("forward + loss", "backward", "optimizer"))
    assert re.search(r"host synchronisations: 0\.00 per step \(0 in \d+\)", fit.text)  # traced: none on a CPU
    assert result["profiled_epochs"] == [0] and fit.epochs == {0}  # epoch 1 ran unprofiled: its own figure
    assert result["train_targets_per_s_unprofiled"] == pytest.approx(
        result["train_targets_per_epoch"] / result["epoch_train_seconds_each"][1]
    )
    evaluation = result.pop("eval_profile")
    assert evaluation.startswith("2 evaluation batches of 64 users on cpu (torch ranker")
    assert "eval: score and rank" in evaluation and "eval: next batch (collate)" in evaluation
    assert set(result) >= KEYS and set(result["eval"]) == {"torch", "numpy"}
    for ranker in ("torch", "numpy"):
        assert (
            set(result["eval"][ranker]) == {"users_per_s", "metrics"}
            and result["eval"][ranker]["users_per_s"] > 0
        )
    assert result["eval"]["torch"]["metrics"] == result["eval"]["numpy"]["metrics"] and result["eval_agree"]
    assert result["eval"]["torch"]["metrics"]["queries"] == result["eval_users"] == 100
    everyone = result["eval_all_users"]  # the torch ranker on every test user, beside the 100-user comparison
    assert everyone["users"] == result["test"]["queries"] > 100 and everyone["users_per_s"] > 0
    assert (
        result["train_targets_per_s"] > 0 and result["epoch_seconds"] > 0 and result["validation_seconds"] > 0
    )
    assert result["epochs"] == 2 and len(result["validation_seconds_each"]) == 2
    assert result["device"] == "cpu" and isinstance(result["machine"], dict)
    json.dumps(result)


def test_differing_names_the_keys():
    assert differing({"a": 1.0, "b": float("nan")}, {"a": 1.0, "b": float("nan")}) == []
    assert differing({"a": 1.0, "c": 2}, {"a": 1.5}) == ["a", "c"]


def test_bench_train_command_writes_bench_train_json(tmp_path):
    """The Hydra command: any training override passes through; DIR/bench_train.json has exactly the keys."""
    args = [sys.executable, "-m", "twotower.cli.bench_train", f"out={tmp_path}", "eval_users=40",
            "eval.baselines=[popularity]", *TINY_DATA, *FAST_TRAIN, "trainer.max_epochs=1"]  # fmt: skip
    proc = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_train.json").read_text())
    assert set(result) >= KEYS and result["eval_agree"] and "metrics agree: True" in proc.stdout
    assert (tmp_path / "run" / "metrics.json").exists()


def test_gpu_scripts_parse():
    for name in ("gpu_check.sh", "gpu_env.sh", "gpu_bench.sh"):
        proc = subprocess.run(
            ["bash", "-n", str(PROJECT_ROOT / "scripts" / name)], capture_output=True, text=True
        )
        assert proc.returncode == 0, (name, proc.stderr)


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_step_on_cpu(tmp_path):
    """GPU_CHECK_TINY=1: the GPU check's four steps shrunk, on CPU, ending in the one summary (with the scale
    step's fit and evaluation profiles)."""
    env = {**os.environ, "GPU_CHECK_TINY": "1", "OUT": str(tmp_path), "PYTHONWARNINGS": "ignore",
           "GPU_CHECK_STEPS": "ml100k scale batch profile",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert isinstance(summary["scale"], dict) and summary["scale"]["eval_agree"]
    assert summary["batch"]["agreement_with_cpu_exact"] == 1.0
    assert summary["targets_met"]["rankers_agree"] is True
    assert summary["scale"]["eval_all_users"]["users"] == summary["scale"]["test"]["queries"]
    assert summary["profile_phases"][0].startswith("3 steps on cpu") and len(summary["profile_phases"]) == 6
    assert summary["scale_fit_profile"][0].startswith("2 steps of the Lightning fit on cpu")
    assert summary["scale_eval_profile"][0].startswith("2 evaluation batches of 64 users on cpu")
    assert re.fullmatch(
        r"host synchronisations: 0\.00 per step \(0 in \d+\)", summary["scale_fit_profile"][-1]
    )
    if ML100K_FOUND:
        assert summary["ml100k"]["eval_agree"]
