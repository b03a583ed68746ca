"""Every acknowledged event survives `kill -9` of the server (a real subprocess) and a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from twotower.benchmarks.service import free_port


def start(bundle, state, port) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--bundle", str(bundle), "--state-dir", str(state), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TWOTOWER_API_TOKEN": "k"},
    )  # fmt: skip
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def test_acknowledged_events_survive_kill_9(run_and_bundle, tmp_path):
    bundle, state, port = run_and_bundle[1], tmp_path / "state", free_port()
    items = __import__("json").loads((bundle / "item_ids.json").read_text())
    auth = {"Authorization": "Bearer k"}
    proc = start(bundle, state, port)
    acked, now = [], round(time.time())
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=10) as client:
            for i in range(30):
                batch = [{"user_id": f"d{i % 3}", "item_id": items[(i * 5 + j) % len(items)], "ts": now - 1000 + i * 10 + j}
                         for j in range(2)]  # fmt: skip
                response = client.post("/events", json={"events": batch})
                assert response.json() == {"accepted": 2, "trimmed": 0}
                acked += [(e["user_id"], e["item_id"], e["ts"]) for e in batch]
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown hook runs
        proc.wait()
    proc = start(bundle, state, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=10) as client:
            stored = []
            for user in ("d0", "d1", "d2"):
                stored += [
                    (user, e["item_id"], e["ts"])
                    for e in client.get(f"/users/{user}/history").json()["events"]
                ]
    finally:
        proc.terminate()
        proc.wait()
    assert sorted(stored) == sorted(acked)
