"""Replays the serving image's install step (serving/requirements.lock alone, with hashes, in a fresh virtual
environment, with only serving/ on the path), starts the server from it and gets a recommendation. No Docker
engine needed. A fast check keeps the lock in step with its input, serving/requirements.txt."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from twotower.benchmarks.servers import free_port
from twotower.config import PROJECT_ROOT

SERVING = PROJECT_ROOT / "serving"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_lock(path: Path) -> dict[str, tuple[str, int]]:
    """``{name: (version, number of hashes)}`` of a pip-compile --generate-hashes lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match[1])
            pins[name] = (match[2], 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            pins[name] = (pins[name][0], pins[name][1] + 1)
    return pins


def test_the_lock_pins_every_requirement_with_hashes():
    """A requirement added to serving/requirements.txt without a new lock fails here (docs/serving.md says
    how to refresh it)."""
    pins = read_lock(SERVING / "requirements.lock")
    assert pins and all(count >= 1 for _, count in pins.values()), "every pin needs a --hash"
    for line in (SERVING / "requirements.txt").read_text().splitlines():
        if line.split("#")[0].strip():
            req = Requirement(line.split("#")[0].strip())
            name = canonicalize_name(req.name)
            assert name in pins, f"{req.name} is not in serving/requirements.lock: refresh the lock"
            version = pins[name][0]
            assert req.specifier.contains(version, prereleases=True), f"{name}=={version} vs {req}: refresh"


@pytest.mark.slow
def test_serving_image_install_and_request(run_and_bundle, tmp_path):
    env_dir, app_dir = tmp_path / "venv", tmp_path / "app"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # the Dockerfile's install step: the lock alone, every file checked against its hash
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--require-hashes", "-r",
                    str(SERVING / "requirements.lock")], check=True, timeout=900)  # fmt: skip
    shutil.copytree(SERVING, app_dir / "serving")
    probe = subprocess.run([str(python), "-c", "import torch"], cwd=app_dir, capture_output=True)
    assert probe.returncode != 0, "torch must not be installed in the serving environment"
    port = free_port()
    server = subprocess.Popen(
        [str(python), "-m", "serving", "--bundle", str(run_and_bundle[1]), "--port", str(port),
         "--state-dir", str(tmp_path / "state")],
        cwd=app_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    output = server.stdout.read().decode() if server.poll() is not None else "timeout"
                    raise AssertionError(output) from None
                time.sleep(0.3)
        catalog = json.loads((run_and_bundle[1] / "item_ids.json").read_text())
        history = catalog[:3]
        request = urllib.request.Request(
            f"{base}/recommend", data=json.dumps({"history": history, "k": 5}).encode(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        body = json.loads(urllib.request.urlopen(request, timeout=10).read())
        assert len(body["items"]) == 5 and body["model_version"] and body["source"] == "model"
        served = [item["item_id"] for item in body["items"]]
        assert len(set(served)) == 5 and set(served) <= set(catalog) - set(history)  # catalog items, unseen
    finally:
        server.terminate()
        server.wait(timeout=10)
