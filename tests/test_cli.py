"""Entry points: twotower/cli modules, their console scripts, and the thin scripts/ wrappers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twotower.config import PROJECT_ROOT

HYDRA = [
    "train",
    "export",
    "batch_score",
    "bench_latency",
    "bench_batch",
    "simulate_feedback",
    "report",
    "audience",
    "bench_audience",
    "bench_train",
    "bench_data",
]
ARGPARSE = ["bench_serving", "check_adaptation", "gpu_bench", "soak", "cold_start", "bench_queries"]
COMMANDS = HYDRA + ARGPARSE
# run where torch is not installed
SERVING_SIDE = [
    "batch_score",
    "bench_serving",
    "check_adaptation",
    "soak",
    "simulate_feedback",
    "report",
    "audience",
]


def console_name(command: str) -> str:
    return "twotower-" + command.replace("_", "-")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs from the repository root, as the README and the GPU scripts do."""
    return subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip


def check_help(command: str, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr
    if command in HYDRA:  # the job name (log file, outputs) is still the command's name
        assert f"{command} is powered by Hydra" in proc.stdout
    else:
        assert proc.stdout.startswith("usage:")


def test_scripts_are_thin_wrappers():
    scripts = sorted((PROJECT_ROOT / "scripts").glob("*.py"))
    assert sorted(p.stem for p in scripts) == sorted(COMMANDS)
    for path in scripts:
        text = path.read_text()
        assert "sys.path" not in text, path
        assert f"from twotower.cli.{path.stem} import main" in text, path
        assert len(text.splitlines()) < 15, f"{path} should only wrap twotower.cli.{path.stem}"


def test_pyproject_declares_every_command():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {console_name(c): f"twotower.cli.{c}:main" for c in COMMANDS}
    for command in COMMANDS:
        assert importlib.util.find_spec(f"twotower.cli.{command}") is not None


@pytest.mark.parametrize("command", COMMANDS)
def test_module_help(command):
    check_help(command, run(sys.executable, "-m", f"twotower.cli.{command}", "--help"))


@pytest.mark.parametrize("command", ["batch_score", "check_adaptation"])  # one Hydra, one argparse: cheap
def test_console_script_and_script_path(command):
    exe = Path(sys.executable).with_name(console_name(command))
    if not exe.exists():
        pytest.skip(f"{exe.name} not installed: pip install -e .")
    check_help(command, run(str(exe), "--help"))
    check_help(command, run(sys.executable, f"scripts/{command}.py", "--help"))


def test_hydra_job_name_and_overrides_through_the_script():
    proc = run(sys.executable, "scripts/export.py", "--cfg", "job", "run_dir=RUN", "out=BUNDLE")
    assert proc.returncode == 0, proc.stderr
    assert "run_dir: RUN\nout: BUNDLE\n" in proc.stdout
    proc = run(sys.executable, "scripts/train.py", "--cfg", "hydra", "--package", "hydra.job")
    assert proc.returncode == 0, proc.stderr
    assert "\nname: train\n" in proc.stdout


def test_serving_side_commands_do_not_import_torch():
    modules = ", ".join(f"twotower.cli.{c}" for c in SERVING_SIDE)
    code = (
        f"import sys, {modules}; print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
