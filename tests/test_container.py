"""Replays the serving image's install step (serving/requirements.txt alone, in a fresh virtual environment,
with only serving/ on the path), starts the server from it and gets a recommendation. No Docker engine needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import venv

import pytest

from twotower.benchmarks.service import free_port
from twotower.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_serving_image_install_and_request(run_and_bundle, tmp_path):
    env_dir, app_dir = tmp_path / "venv", tmp_path / "app"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(PROJECT_ROOT / "serving" / "requirements.txt")],
                   check=True, timeout=900)  # fmt: skip
    shutil.copytree(PROJECT_ROOT / "serving", app_dir / "serving")
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
