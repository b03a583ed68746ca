"""Faults seen over HTTP: a store that cannot take writes (503, not ready, reads go on), broken bundles on
reload (422, the old one serves on), the bundle root, SIGHUP, readiness before load, start-up errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from serving.store import StoreUnavailable


def broken_copy(bundle: Path, to: Path, name: str) -> Path:
    """A copy of ``bundle`` whose file ``name`` is garbage with a matching checksum (verification passes)."""
    shutil.copytree(bundle, to)
    (to / name).write_bytes(b"garbage, not what the manifest says it is\n" * 20)
    manifest = json.loads((to / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = hashlib.sha256((to / name).read_bytes()).hexdigest()
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def renamed_copy(bundle: Path, to: Path, version: str) -> Path:
    """A copy of ``bundle`` that reports another model version."""
    shutil.copytree(bundle, to)
    manifest = json.loads((to / "manifest.json").read_text())
    (to / "manifest.json").write_text(json.dumps({**manifest, "model_version": version}))
    return to


class Unwritable:
    """The store, as it is when its disk refuses writes (read-only or full): reads work, writes raise."""

    writable = False

    def __init__(self, store) -> None:
        self._store = store

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def _refuse(self, *args, **kwargs):
        raise StoreUnavailable(f"{self._store.path}: attempt to write a readonly database")

    append_tracked = record_items = erase = _refuse

    def probe(self) -> bool:
        return False


class Unreachable(Unwritable):
    """The store while its server is unreachable (a Redis outage): reads raise too."""

    def _refuse(self, *args, **kwargs):
        raise StoreUnavailable("history store redis://db:6379/0 cannot be written: Connection refused")

    def _refuse_read(self, *args, **kwargs):
        raise StoreUnavailable("history store redis://db:6379/0 cannot be read: Connection refused", "read")

    append_tracked = record_items = erase = _refuse
    version = history = history_columns = is_erased = _refuse_read


@pytest.fixture
def bundles(run_and_bundle, tmp_path):
    root = tmp_path / "bundles"
    shutil.copytree(run_and_bundle[1], root / "current")
    return root


@pytest.fixture
def client(bundles, tmp_path):
    settings = Settings(bundle=str(bundles / "current"), state_dir=str(tmp_path / "state"),
                        bundle_root=str(bundles))  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_an_unwritable_store_is_503_and_not_ready_while_reads_go_on(client, monkeypatch):
    live = client.app.state.live
    rec, user = live.recommender, next(iter(live.recommender.histories))
    item, category = rec.item_ids[0], rec.bundle.categories[1]
    monkeypatch.setattr(live, "store", Unwritable(live.store))
    for method, path, body in (("POST", "/events", {"events": [{"user_id": user, "item_id": item}]}),
                               ("POST", "/items", {"items": [{"item_id": "new", "categories": [category]}]}),
                               ("DELETE", f"/users/{user}", None)):  # fmt: skip
        response = client.request(method, path, json=body)
        assert response.status_code == 503, path
        assert "readonly database" in response.json()["detail"] and response.headers["retry-after"]
        assert response.json()["detail"].startswith(
            "history store cannot take writes now, nothing was stored"
        )
    assert "new" not in rec.catalog  # durable first, then visible: nothing changed
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "store not writable"
    assert client.post("/recommend", json={"user_id": user, "k": 3}).json()["source"] == "model"
    assert client.get(f"/users/{user}/history").status_code == 200
    monkeypatch.undo()
    assert client.get("/readyz").status_code == 200


def test_a_503_says_whether_a_read_or_a_write_failed(client, monkeypatch):
    live = client.app.state.live
    user, item = next(iter(live.recommender.histories)), live.recommender.item_ids[0]
    monkeypatch.setattr(live, "store", Unreachable(live.store))
    for method, path, body in (("GET", f"/users/{user}/history", None),
                               ("POST", "/recommend", {"user_id": user, "k": 3})):  # fmt: skip
        response = client.request(method, path, json=body)
        assert response.status_code == 503 and response.headers["retry-after"], path
        detail = response.json()["detail"]
        assert detail.startswith("history store cannot be read now") and "stored" not in detail, detail
    write = client.post("/events", json={"events": [{"user_id": user, "item_id": item}]})
    assert write.status_code == 503 and "cannot take writes now, nothing was stored" in write.json()["detail"]
    assert client.post("/recommend", json={"history": [item], "k": 3}).status_code == 200  # reads no store


@pytest.mark.parametrize(
    ("doing", "write", "operation"),
    [("read", False, "read"), ("written", True, "write"), ("opened", False, "open")],
)
def test_a_redis_outage_says_what_failed(doing, write, operation):
    from redis import exceptions as rex

    from serving.redisdb import RedisDatabase

    db = object.__new__(RedisDatabase)  # no server: only the mapping of its errors is under test
    db.where, db.writable = "redis://db:6379/0", True
    with pytest.raises(StoreUnavailable, match=f"cannot be {doing}") as caught, db._guard(doing, write=write):
        raise rex.ConnectionError("Connection refused")
    assert caught.value.operation == operation and db.writable is not write


def test_readyz_is_503_loading_before_the_bundle_is_loaded(run_and_bundle, tmp_path):
    app = create_app(Settings(bundle=str(run_and_bundle[1]), state_dir=str(tmp_path / "s")))
    client = TestClient(app)  # not entered: the lifespan has not run
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "loading"
    assert client.post("/recommend", json={"history": ["1"]}).status_code == 503


@pytest.mark.parametrize(
    "name", ["user_tower.onnx", "user_tower_unpadded.onnx", "items.parquet", "histories.parquet", "index.faiss",
             "item_embeddings.npy", "item_ids.json", "category_embeddings.npy"],
)  # fmt: skip
def test_every_broken_bundle_is_a_422_on_reload_and_the_old_one_serves_on(
    client, bundles, run_and_bundle, name
):
    if name not in json.loads((run_and_bundle[1] / "manifest.json").read_text())["files"]:
        pytest.skip(f"{name} is not in this bundle")
    broken_copy(run_and_bundle[1], bundles / "broken", name)
    before = client.app.state.live.recommender
    response = client.post("/admin/reload", json={"bundle": "broken"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "bundle"] and "broken" in error["msg"]
    assert client.app.state.live.recommender is before
    assert client.post("/recommend", json={"history": before.item_ids[:2], "k": 2}).status_code == 200


def test_reload_stays_under_the_bundle_root(client, bundles, run_and_bundle, tmp_path):
    renamed_copy(run_and_bundle[1], bundles / "next", "v-next")
    (bundles / "escape").symlink_to(run_and_bundle[1], target_is_directory=True)  # a link out of the root
    for given in (str(run_and_bundle[1]), "escape", "../bundles/../..", str(tmp_path)):
        response = client.post("/admin/reload", json={"bundle": given})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "bundle"], (
            given
        )
    reload = client.post("/admin/reload", json={"bundle": "next"})
    assert reload.status_code == 200 and reload.json() == {
        "model_version": "v-next",
        "bundle": str(bundles / "next"),
    }
    again = client.post("/admin/reload", json={})  # no path: the bundle now in use, not the start-up one
    assert again.json()["model_version"] == "v-next"


def test_sighup_reloads_the_bundle_now_in_use(run_and_bundle, tmp_path):
    from twotower.benchmarks.servers import free_port

    first = renamed_copy(run_and_bundle[1], tmp_path / "first", "v-first")
    second = renamed_copy(run_and_bundle[1], tmp_path / "second", "v-second")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--bundle", str(first), "--port", str(port),
                             "--state-dir", str(tmp_path / "state")], stderr=subprocess.PIPE)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def version_becomes(expected: str) -> bool:
        deadline = time.time() + 60
        while time.time() < deadline:
            with _quiet():
                if httpx.get(f"{url}/readyz", timeout=1).json().get("model_version") == expected:
                    return True
            time.sleep(0.1)
        return False

    try:
        assert version_becomes("v-first")
        reload = httpx.post(f"{url}/admin/reload", json={"bundle": str(second)}, timeout=30)
        assert reload.json()["model_version"] == "v-second"
        manifest = json.loads((second / "manifest.json").read_text())
        (second / "manifest.json").write_text(json.dumps({**manifest, "model_version": "v-second-b"}))
        os.kill(proc.pid, signal.SIGHUP)
        assert version_becomes("v-second-b")  # the start-up bundle would answer v-first
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _quiet:
    """Ignore connection errors while the server starts."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, httpx.HTTPError)


@pytest.mark.parametrize(
    "fault", ["missing bundle", "broken bundle", "state dir under a file", "empty key file"]
)
def test_start_up_errors_are_one_line_naming_the_path(run_and_bundle, tmp_path, fault):
    from serving.__main__ import main

    bundle, state = run_and_bundle[1], tmp_path / "state"
    if fault == "missing bundle":
        bundle = tmp_path / "nowhere"
    elif fault == "broken bundle":
        bundle = broken_copy(run_and_bundle[1], tmp_path / "broken", "user_tower.onnx")
    elif fault == "empty key file":
        state.mkdir()
        (state / "pseudonym.key").write_text("")  # a store problem, not the bundle's
    else:
        (tmp_path / "file").write_text("")
        state = tmp_path / "file" / "state"
    with pytest.raises(SystemExit) as exit_:
        main(["--bundle", str(bundle), "--state-dir", str(state), "--port", "1"])
    message = str(exit_.value.code)
    assert message.startswith("python -m serving: error: ") and "\n" not in message
    assert str(bundle if "bundle" in fault else state) in message
    what = message.removeprefix("python -m serving: error: ")
    assert what.startswith("bundle") == ("bundle" in fault), what  # the bundle's fault or the state dir's


def test_a_start_up_error_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "serving", "--bundle", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"python -m serving: error: bundle {tmp_path / 'nowhere'}: no such directory"
    ]
