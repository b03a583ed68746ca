"""Two real service processes on one Redis (``TWOTOWER_STORE``): an event posted to one changes the other's
next answer; nothing acknowledged is lost when a service or Redis itself is killed -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from serving.recommender import Recommender
from twotower.benchmarks.servers import RedisServer, free_port, wait_ready

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server not on PATH (apt-get install -y redis-server; .ci/run installs it)",
)
AUTH = {"Authorization": "Bearer k"}


def start_replica(bundle, state, redis_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TWOTOWER_API_TOKEN": "k", "TWOTOWER_STORE": redis_url,
           "TWOTOWER_PSEUDONYM_KEY": "one-key-for-every-replica", "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--bundle", str(bundle), "--state-dir", str(state), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/readyz", 90, f": replica on {redis_url}")
    except RuntimeError:
        proc.kill()
        raise
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def replicas(run_and_bundle, tmp_path):
    """Redis and two service processes, each with its own state dir: only Redis is shared."""
    with RedisServer(tmp_path / "redis") as redis_server:
        procs = []
        try:
            for name in ("a", "b"):
                procs.append(start_replica(run_and_bundle[1], tmp_path / name, redis_server.url))
            yield redis_server, procs
        finally:
            for proc, _ in procs:
                proc.kill()
                proc.wait()


def test_an_event_posted_to_one_replica_changes_the_others_next_answer(replicas, run_and_bundle):
    _, ((_, url_a), (_, url_b)) = replicas
    items = json.loads((run_and_bundle[1] / "item_ids.json").read_text())
    with httpx.Client(base_url=url_a, headers=AUTH, timeout=30) as a, httpx.Client(base_url=url_b, headers=AUTH, timeout=30) as b:  # fmt: skip
        before = b.post("/recommend", json={"user_id": "roaming", "k": 10}).json()
        assert before["source"] == "popularity"
        posted = a.post("/events", json={"events": [{"user_id": "roaming", "item_id": i} for i in items[:3]]})
        assert posted.json() == {"accepted": 3, "trimmed": 0}
        after = b.post("/recommend", json={"user_id": "roaming", "k": 10}).json()
        shown = [x["item_id"] for x in after["items"]]
        assert after["source"] == "model" and shown != [x["item_id"] for x in before["items"]]
        assert not set(items[:3]) & set(shown)  # B read the history A stored
        a.post("/events", json={"events": [{"user_id": "roaming", "item_id": shown[0]}]})  # B's top item
        again = b.post("/recommend", json={"user_id": "roaming", "k": 10}).json()
        assert shown[0] not in {x["item_id"] for x in again["items"]}  # B's cached history was not reused
        assert [e["item_id"] for e in b.get("/users/roaming/history").json()["events"]] == items[:3] + [
            shown[0]
        ]
        assert b.delete("/users/roaming").json() == {"user_id": "roaming", "deleted": 4}
        assert a.post("/recommend", json={"user_id": "roaming", "k": 10}).json()["source"] == "popularity"
        # both replicas started on one empty store at once: it was seeded once, by one of them
        seeded = next(iter(Recommender.load(run_and_bundle[1]).histories))
        events = [(e["item_id"], e["ts"]) for e in a.get(f"/users/{seeded}/history").json()["events"]]
        assert events and len(set(events)) == len(events)
        assert events == [(e["item_id"], e["ts"]) for e in b.get(f"/users/{seeded}/history").json()["events"]]


def test_nothing_acknowledged_is_lost_when_a_replica_and_then_redis_are_killed(replicas, run_and_bundle):
    redis_server, ((proc_a, url_a), (_, url_b)) = replicas
    items = json.loads((run_and_bundle[1] / "item_ids.json").read_text())
    acked, now = [], round(time.time())
    with httpx.Client(base_url=url_a, headers=AUTH, timeout=30) as a:
        for i in range(30):
            batch = [{"user_id": f"d{i % 3}", "item_id": items[(i * 5 + j) % len(items)], "ts": now - 1000 + i * 10 + j}
                     for j in range(2)]  # fmt: skip
            assert a.post("/events", json={"events": batch}).json() == {"accepted": 2, "trimmed": 0}
            acked += [(e["user_id"], e["item_id"], e["ts"]) for e in batch]
    proc_a.send_signal(signal.SIGKILL)  # no shutdown hook runs
    proc_a.wait()

    def stored(client: httpx.Client) -> list[tuple]:
        return sorted((u, e["item_id"], e["ts"]) for u in ("d0", "d1", "d2")
                      for e in client.get(f"/users/{u}/history").json()["events"])  # fmt: skip

    with httpx.Client(base_url=url_b, headers=AUTH, timeout=30) as b:
        assert stored(b) == sorted(acked)
        redis_server.restart()  # SIGKILL of Redis (appendfsync always), then the same files again
        assert stored(b) == sorted(acked)  # the surviving replica reconnects by itself
