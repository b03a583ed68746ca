"""Every acknowledged event survives `kill -9` of the server (a real subprocess) and a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from twotower.benchmarks.servers import free_port


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


CATALOG_CLIENT = """
import json, sys, threading, httpx
port, prefix, category, adds = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
added, removed, lock = [], [], threading.Lock()

def worker(t):
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer k"}, timeout=60) as c:
        for n in range(adds):
            item = f"{prefix}-{t}-{n}"
            if c.post("/items", json={"items": [{"item_id": item, "categories": [category]}]}).status_code == 200:
                with lock:
                    added.append(item)
            if n % 2 and c.delete(f"/items/{item}").status_code == 200:
                with lock:
                    removed.append(item)

threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"added": added, "removed": removed}))
"""


def test_catalog_changes_from_16_threads_in_two_processes_are_all_live_and_durable(run_and_bundle, tmp_path):
    """1,008 acknowledged additions and removals at once: each is served as acknowledged, and after kill -9."""
    import json

    import pandas as pd

    bundle, state, port = run_and_bundle[1], tmp_path / "state", free_port()
    category = next(c for cats in pd.read_parquet(bundle / "items.parquet")["categories"] for c in cats)
    proc = start(bundle, state, port)
    try:
        clients = [subprocess.Popen([sys.executable, "-c", CATALOG_CLIENT, str(port), f"p{p}", category, "42"],
                                    stdout=subprocess.PIPE, text=True) for p in range(2)]  # fmt: skip
        results = [json.loads(c.communicate(timeout=300)[0]) for c in clients]
        added = {i for r in results for i in r["added"]}
        removed = {i for r in results for i in r["removed"]}
        assert len(added) == 2 * 8 * 42 and len(removed) == 2 * 8 * 21  # every change acknowledged

        def served(client: httpx.Client, item: str) -> bool:
            return client.get(f"/items/{item}/similar", params={"k": 1}).status_code == 200

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert [i for i in sorted(added) if served(client, i) == (i in removed)] == []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start(bundle, state, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert [i for i in sorted(added) if served(client, i) == (i in removed)] == []
    finally:
        proc.kill()
        proc.wait()
