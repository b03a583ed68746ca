"""HTTP service: contract, limits (every client mistake is a 4xx), metrics, readiness."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


@pytest.fixture(scope="module")
def client(run_and_bundle, tmp_path_factory):
    settings = Settings(bundle=str(run_and_bundle[1]), max_k=50, max_history=30, max_body_bytes=4096,
                        state_dir=str(tmp_path_factory.mktemp("state")))  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def known(client):
    rec = client.app.state.live.recommender
    return rec, next(iter(rec.histories)), rec.item_ids


def test_recommend_contract(client, known):
    rec, user, items = known
    body = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert set(body) >= {"items", "model_version"} and len(body["items"]) == 5
    assert all(set(x) == {"item_id", "score"} and isinstance(x["item_id"], str) for x in body["items"])
    assert body["model_version"] == rec.model_version and body["source"] == "model"
    by_history = client.post("/recommend", json={"history": items[:3] + ["ghost"], "k": 4,
                                                 "exclude_items": [items[5]]}).json()  # fmt: skip
    assert len(by_history["items"]) == 4 and by_history["unknown_items"] == ["ghost"]
    assert items[5] not in {x["item_id"] for x in by_history["items"]}
    allow = client.post("/recommend", json={"history": items[:2], "k": 3, "allow_items": items[10:14]}).json()
    assert {x["item_id"] for x in allow["items"]} <= set(items[10:14])
    anon = client.post("/recommend", json={"user_id": "nobody", "k": 3}).json()
    assert anon["source"] == "popularity" and len(anon["items"]) == 3 and anon["intent"] == {}
    from twotower.benchmarks.adaptation import items_by_category

    category, members = max(items_by_category(rec).items(), key=lambda kv: len(kv[1]))
    session = client.post("/recommend", json={"history": members[:5], "k": 3}).json()
    assert category in session["intent"] and 0 < session["intent"][category] <= 1  # why the list leans


def test_integer_ids_are_accepted(tmp_path):
    from serving.schemas import RecommendRequest

    assert RecommendRequest(user_id=7, history=[1, "2"]).history == ["1", "2"]


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"k": 0}, 422, "k"),
        ({"k": 51}, 422, "k"),
        ({"k": "many"}, 422, "k"),
        ({"history": ["a"] * 31}, 422, "history"),
        ({"history": "not-a-list"}, 422, "history"),
        ({"history": [True]}, 422, "history"),
        ({"history": [1.5]}, 422, "history"),
        ({"user_id": {"x": 1}}, 422, "user_id"),
        ({"surprise": 1}, 422, "surprise"),
        ({"exclude_items": [""]}, 422, "exclude_items"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(client, payload, status, field):
    response = client.post("/recommend", json=payload)
    assert response.status_code == status
    assert field in response.text


def test_malformed_and_oversized_bodies(client):
    assert (
        client.post(
            "/recommend", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert (
        client.post("/recommend", content=b"[1, 2]", headers={"content-type": "application/json"}).status_code
        == 422
    )
    huge = {"history": ["x" * 200] * 25}
    assert client.post("/recommend", json=huge).status_code == 413


def test_similar_health_ready_metrics(client, known):
    _, _, items = known
    similar = client.get(f"/items/{items[0]}/similar", params={"k": 3}).json()
    assert len(similar["items"]) == 3 and items[0] not in {x["item_id"] for x in similar["items"]}
    assert client.get("/items/ghost/similar").status_code == 404
    assert client.get(f"/items/{items[0]}/similar", params={"k": 0}).status_code == 422
    assert client.get(f"/items/{items[0]}/similar", params={"k": 51}).status_code == 422
    assert client.get("/healthz").json() == {"status": "ok", "model_version": None}
    assert client.get("/readyz").json()["status"] == "ready"
    metrics = client.get("/metrics").text
    assert 'twotower_requests_total{endpoint="/recommend"' in metrics
    assert "twotower_request_seconds_bucket" in metrics and "twotower_errors_total" in metrics


def test_openapi_documents_every_field(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]
    assert set(schema) == {"user_id", "history", "k", "exclude_seen", "exclude_items", "allow_items"}
    assert all(prop.get("description") for prop in schema.values())


def test_serving_benchmark_writes_figures(run_and_bundle, tmp_path):
    import json

    from twotower.benchmarks.service import run

    result = run(run_and_bundle[1], tmp_path / "latency.json", n_users=20, http_seconds=1.0)
    saved = json.loads((tmp_path / "latency.json").read_text())
    assert saved["in_process"]["recommend"]["n"] == 60
    for part in ("encode", "search", "recommend"):
        figures = result["in_process"][part]
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    store = result["in_process_with_store"]
    assert store["reads_only"]["p50_ms"] > 0 and store["after_new_event"]["p50_ms"] > 0
    web = result["http"]
    assert web["recommend"]["errors"] == 0 and web["noop"]["errors"] == 0 and web["ratio"] > 0
