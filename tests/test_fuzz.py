"""The OpenAPI schema tells the truth: schemathesis (`--checks all`) over every operation of a real server,
with a token holding every scope, /admin included (`make test-fuzz`; CI runs it after `make test`).

The server runs in its own process with its own copy of the bundle under TWOTOWER_BUNDLE_ROOT, so a fuzzed
reload can load nothing else, and fuzzed erasures and catalog changes touch only this run's state. Settings
of the checks, and why: tests/schemathesis.toml and docs/serving.md#fuzzing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from twotower.benchmarks.servers import free_port

pytestmark = pytest.mark.fuzz
TOKEN = "fuzz-token-0123456789"
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("TWOTOWER_FUZZ_EXAMPLES", "100"))  # per operation and phase
SEED = os.environ.get("TWOTOWER_FUZZ_SEED", "20170")  # fixed: CI reruns the same cases


@pytest.fixture
def server(run_and_bundle, tmp_path):
    root = tmp_path / "bundles"
    shutil.copytree(run_and_bundle[1], root / "served")
    port, log = free_port(), (tmp_path / "server.log").open("w")
    env = {**os.environ, "TWOTOWER_API_TOKEN": TOKEN, "TWOTOWER_BUNDLE_ROOT": str(root),
           "TWOTOWER_METRICS_NEED_TOKEN": "true"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--bundle", str(root / "served"), "--port", str(port),
                             "--state-dir", str(tmp_path / "state")], env=env, stdout=log, stderr=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        yield url, tmp_path / "server.log"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_every_operation_holds_to_its_schema_under_schemathesis(server, tmp_path):
    url, server_log = server
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
               "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", SEED, "--workers", "1",
               "--header", f"Authorization: Bearer {TOKEN}", "--no-color"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    report = done.stdout + done.stderr
    print(report)
    generated = re.search(r"(\d+) generated", report)
    assert done.returncode == 0, report
    assert generated and int(generated.group(1)) >= 1000, report
    assert "Traceback" not in server_log.read_text()  # no 500 went unnoticed
