"""The README's commands, run as written: the demo recipe of `make demo` and the serve + curl example
(with the bundle, state directory and port swapped for a test's own)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from twotower.benchmarks.servers import free_port
from twotower.config import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def _bash_block(heading: str) -> list[str]:
    """Lines of the first ```bash block under a README heading (continuations joined)."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ").splitlines()


def test_make_demo_runs_its_training_command_and_prints_the_readme_table(tmp_path):
    recipe = subprocess.run(
        ["make", "-n", "demo"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    train = [line for line in recipe.stdout.splitlines() if "scripts/train.py" in line]
    assert len(train) == 1 and "experiment=demo" in train[0], recipe.stdout
    argv = shlex.split(train[0])
    argv = [
        sys.executable if a.endswith("/python") else a for a in argv if not a.startswith("paths.output_dir=")
    ]
    out = tmp_path / "demo"
    done = subprocess.run(argv + [f"paths.output_dir={out}", "trainer.max_epochs=1"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = README.split("`make demo` ends with this table", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    header = table.splitlines()[1].split()
    printed = done.stdout.splitlines()
    assert any(line.split() == header for line in printed), done.stdout
    for row in ("model", "served", "popularity", "itemknn", "ease"):
        assert any(re.match(rf"{row}\s+0\.\d{{4}}", line) for line in printed), (row, done.stdout)
    assert printed[-1] == f"metrics: {out}/metrics.json" and (out / "metrics.json").exists()


def test_serve_and_curl_example_answers_as_documented(run_and_bundle, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    lines = _bash_block("HTTP API")
    serve, curl = [line for line in lines if line and not line.startswith("#")][:2]
    answer = next(line for line in lines if line.startswith("# {"))[2:]  # the documented response
    port = free_port()
    serve = serve.replace("bundles/mine", str(run_and_bundle[1])).replace(
        "--state-dir state", f"--state-dir {tmp_path / 'state'}"
    )
    serve = serve.replace("--port 8000", f"--port {port}").replace(".venv/bin/python", sys.executable)
    assert serve.startswith(f"{sys.executable} -m serving --bundle "), serve
    server = subprocess.Popen(shlex.split(serve), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, server.stdout.read().decode()[-3000:]
            time.sleep(0.3)
        assert curl.startswith("curl ") and "localhost:8000/recommend" in curl
        done = subprocess.run(shlex.split(curl.replace("localhost:8000", f"127.0.0.1:{port}")),
                              capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        body = json.loads(done.stdout)
        documented = json.loads(answer.replace(",...", "").replace("...", ""))
        assert (
            set(body) == set(documented) and len(body["items"]) == json.loads(curl.split("-d ")[1][1:-1])["k"]
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
