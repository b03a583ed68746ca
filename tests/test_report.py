"""The responsible-personalization report over a tiny run: the sweep through the served evaluation, the knob
costs on its bundle, the plots and the markdown."""

from __future__ import annotations

import json
import subprocess
import sys

from twotower.config import PROJECT_ROOT
from twotower.responsible.cost import knob_costs
from twotower.responsible.sweep import knob_sweep, load_run


def test_sweep_reproduces_the_runs_served_figures(run_and_bundle):
    run_dir = run_and_bundle[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = load_run(run_dir)
    sweep = knob_sweep(run, {"diversity": [0.0, 0.8], "max_per_category": [1]}, split="test")
    # the rebuilt evaluation of the served default is the one training reported
    assert sweep["served"]["recall@10"] == metrics["served"]["test"]["recall@10"]
    assert sweep["served"]["diversity@10"] == metrics["served"]["test"]["diversity@10"]
    assert [p["value"] for p in sweep["knobs"]["diversity"]] == [0.0, 0.8]
    assert sweep["knobs"]["diversity"][0]["recall@10"] == metrics["served"]["test"]["recall@10"]  # all off
    assert sweep["knobs"]["max_per_category"][0]["diversity@10"] >= sweep["served"]["diversity@10"]


def test_costs_are_ratios_to_the_baseline(rec):
    users = [u for u, h in rec.histories.items() if len(h.rows)][:5]
    costs = knob_costs(rec, users, rounds=1)
    assert costs["settings"]["baseline"]["p50_ratio"] == 1.0
    assert set(costs["settings"]) >= {"diversity", "explain", "explore", "calibrate", "max_per_category"}
    assert all(v["p50_ms"] > 0 for v in costs["settings"].values())


def test_report_command_writes_the_report(run_and_bundle, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/report.py",
            f"run_dir={run_and_bundle[0]}",
            f"bundle={run_and_bundle[1]}",
            f"out={out}",
            "sweep.diversity=[0.0,0.5]",
            "sweep.max_per_category=[0,2]",
            "sweep.calibrate=[0.0]",
            "sweep.explore=[0.0,0.3]",
            "cost.users=5",
            "cost.rounds=1",
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    for section in ("Knob sweep", "Exposure by popularity decile", "Latency cost"):
        assert section in text
    assert (out / "sweep.png").stat().st_size > 0 and (out / "exposure.png").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert [p["value"] for p in report["sweep"]["knobs"]["explore"]] == [0.0, 0.3]
    assert not (PROJECT_ROOT / "report.log").exists()


def test_markdown_shows_what_was_picked_on_validation():
    from twotower.responsible.report import markdown

    row = {
        "recall@10": 0.2,
        "ndcg@10": 0.1,
        "diversity@10": 0.7,
        "miscalibration@10": 0.5,
        "coverage@10": 0.3,
    }
    picked = {"grid": {"diversity": [0.0, 0.5], "calibrate": [0.0]}, "chosen": {"diversity": 0.5, "calibrate": 0.0},
              "outcome": "as diverse as the model, recall kept: the least miscalibrated", "rule": "the rule",
              "model_val": {"recall@10": 0.21, "diversity@10": 0.69},
              "val": [{"diversity": 0.0, "calibrate": 0.0, **row}, {"diversity": 0.5, "calibrate": 0.0, **row}]}  # fmt: skip
    metrics = {"dataset": {"name": "d", "users": 1, "items": 2, "interactions": 3}, "protocol": "p", "test": row,
               "served": {"rerank": {}, "picked_on_validation": picked, "test": row}, "baselines": {"ease": row}}  # fmt: skip
    text = markdown(metrics, None, None, None, "RUN")
    assert (
        "**{'diversity': 0.5, 'calibrate': 0.0}**" in text and "| diversity | calibrate | recall@10 |" in text
    )
    assert text.count("| 0.5000 | 0.0000 |") == 1 and "| ease |" in text
