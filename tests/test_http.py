"""HTTP service: contract, limits and inputs (every client mistake is a JSON 4xx naming the field), path ids,
the OpenAPI schema's limits and statuses, metrics, readiness, fair writes."""

from __future__ import annotations

import inspect
import json
import threading
import time
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings

JSON = {"content-type": "application/json"}
# ids POST /events and POST /items accept, which a path must carry whole
ODD_IDS = ["team/alice", "/lead", "trail/", "a//b", "..", ".", "%2F", "100%", "a b", "ünï/cødé ✓", "?q=1#x",
           "x/history", "x/similar", "tab\tnew\nline"]  # fmt: skip


def path_of(id_: str) -> str:
    """An id as one path segment: every reserved character escaped, dots too (clients resolve `.` and `..`)."""
    return quote(id_, safe="").replace(".", "%2E")


def strict_json(text: str) -> object:
    """Parse as a strict JSON reader would: NaN / Infinity are not JSON."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a response body"))


@pytest.fixture(scope="module")
def client(run_and_bundle, tmp_path_factory):
    settings = Settings(bundle=str(run_and_bundle[1]), max_k=50, max_history=30, max_body_bytes=4096,
                        state_dir=str(tmp_path_factory.mktemp("state")))  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def server(run_and_bundle, tmp_path_factory):
    """A real uvicorn on loopback (in a thread): ids in paths as a real server hands them over."""
    import uvicorn

    from twotower.benchmarks.servers import free_port

    settings = Settings(bundle=str(run_and_bundle[1]), state_dir=str(tmp_path_factory.mktemp("served")))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join()


@pytest.fixture(scope="module")
def known(client):
    rec = client.app.state.live.recommender
    return rec, next(iter(rec.histories)), rec.item_ids


def ids(response) -> list[str]:
    return [x["item_id"] for x in response.json()["items"]]


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


def test_integer_ids_are_accepted_up_to_2_to_the_53(client):
    from serving.schemas import RecommendRequest

    assert RecommendRequest(user_id=7, history=[1, "2"]).history == ["1", "2"]
    assert client.post("/recommend", json={"history": [2**53 - 1, 7.0], "k": 1}).json()["unknown_items"] == [
        str(2**53 - 1),
        "7",
    ]
    for too_big in (2**53, -(2**53), 2**64, 1e300):
        assert client.post("/recommend", json={"history": [too_big], "k": 1}).status_code == 422


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
        ({"k": True}, 422, "k"),  # the schema's types, not pydantic's lax ones
        ({"k": "10"}, 422, "k"),
        ({"exclude_seen": 0}, 422, "exclude_seen"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(client, payload, status, field):
    response = client.post("/recommend", json=payload)
    assert response.status_code == status
    assert field in response.text


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/recommend", b'{"history": ["1"], "k": NaN}', "k"),
        ("/recommend", b'{"user_id": "1", "exclude_seen": NaN}', "exclude_seen"),
        ("/recommend", b'{"history": [Infinity]}', "history"),
        ("/recommend", b'{"history": ["1"], "k": -Infinity}', "k"),
        ("/events", b'{"events": [{"user_id": "u", "item_id": "1", "dwell_s": Infinity}]}', "dwell_s"),
        ("/events", b'{"events": [{"user_id": "u", "item_id": "1", "ts": NaN}]}', "ts"),
        ("/events", b'{"events": [{"user_id": "u", "item_id": "1", "dwell_s": false}]}', "dwell_s"),
    ],
)
def test_non_finite_or_mistyped_numbers_are_422_naming_the_field_in_strict_json(client, path, raw, field):
    response = client.post(path, content=raw, headers=JSON)
    assert response.status_code == 422
    assert any(field in error["loc"] for error in strict_json(response.text)["detail"])
    assert client.get("/healthz").status_code == 200  # the connection and the server carry on


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/recommend", '{"user_id": "s\\ud800"}', "user_id"),
        ("/recommend", '{"history": ["\\ud800"]}', "history"),
        ("/recommend", '{"history": ["1"], "exclude_items": ["a\\udfff"]}', "exclude_items"),
        ("/recommend", '{"history": ["1"], "allow_items": ["\\ud800b"]}', "allow_items"),
        ("/events", '{"events": [{"user_id": "s\\ud800", "item_id": "1"}]}', "user_id"),
        ("/events", '{"events": [{"user_id": "u", "item_id": "\\ud800"}]}', "item_id"),
        ("/events", '{"events": [{"user_id": "u", "item_id": "1", "event": "\\ud800"}]}', "event"),
        ("/items", '{"items": [{"item_id": "new\\ud800", "categories": ["c"]}]}', "item_id"),
        ("/items", '{"items": [{"item_id": "new", "categories": ["\\ud800"]}]}', "categories"),
        ("/admin/reload", '{"bundle": "/tmp/\\ud800"}', "bundle"),
    ],
)
def test_lone_surrogates_are_422_naming_the_field(client, path, raw, field):
    response = client.post(path, content=raw.encode(), headers=JSON)
    assert response.status_code == 422
    assert any(field in error["loc"] for error in strict_json(response.text)["detail"])


def test_an_item_id_that_is_not_unicode_never_goes_live(client, known):
    rec, _, items = known
    item = {"item_id": "new\ud800", "categories": [rec.bundle.categories[1]]}
    raw = json.dumps({"items": [item]}).encode()  # ensure_ascii: the surrogate travels as \ud800
    assert client.post("/items", content=raw, headers=JSON).status_code == 422
    assert "new\ud800" not in rec.catalog
    for user in rec.histories:
        assert client.post("/recommend", json={"user_id": user, "k": 50}).status_code == 200
    assert client.get(f"/items/{items[1]}/similar", params={"k": 50}).status_code == 200


def test_malformed_and_oversized_bodies(client):
    for raw in (b"{not json", b"[1, 2]", b'{"history": ["\xff"]}'):  # the last is not UTF-8
        response = client.post("/recommend", content=raw, headers=JSON)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][0] == "body"
    huge = {"history": ["x" * 200] * 25}
    assert client.post("/recommend", json=huge).status_code == 413


def test_a_chunked_body_over_the_limit_is_413(client):
    def chunks(n: int):
        yield b'{"history": ['
        for _ in range(n):
            yield b'"xxxxxxxxxxxxxxxxxxxx", '
        yield b'"x"], "k": 2}'

    response = client.post("/recommend", content=chunks(300), headers=JSON)  # no content-length
    assert response.status_code == 413 and "4096 bytes" in response.json()["detail"]
    assert client.post("/recommend", content=chunks(3), headers=JSON).status_code == 200


def test_a_post_items_422_has_the_shape_of_every_other_422(client):
    response = client.post("/items", json={"items": [{"item_id": "n2", "categories": ["?"]}]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "items"] and "n2" in error["msg"] and error["type"]


@pytest.mark.parametrize("user", ODD_IDS)
def test_every_user_id_events_accept_can_be_read_and_erased_by_path(server, known, user):
    client, item = server, known[2][0]
    assert client.post("/events", json={"events": [{"user_id": user, "item_id": item}]}).status_code == 200
    history = client.get(f"/users/{path_of(user)}/history").json()
    assert history["user_id"] == user and [e["item_id"] for e in history["events"]] == [item]
    assert client.delete(f"/users/{path_of(user)}").json() == {"user_id": user, "deleted": 1}
    assert client.get(f"/users/{path_of(user)}/history").json()["events"] == []


@pytest.mark.parametrize("item", ODD_IDS)
def test_every_item_id_items_accept_can_be_found_and_removed_by_path(server, known, item):
    client, category = server, known[0].bundle.categories[1]
    added = client.post("/items", json={"items": [{"item_id": item, "categories": [category]}]})
    assert added.json() == {"items": [item]}
    similar = client.get(f"/items/{path_of(item)}/similar", params={"k": 3}).json()
    assert similar["item_id"] == item and len(similar["items"]) == 3
    assert client.delete(f"/items/{path_of(item)}").json() == {"items": [item]}
    assert client.get(f"/items/{path_of(item)}/similar").status_code == 404
    assert client.get(f"/items/{path_of(item)}").status_code == 404  # a deleted resource is gone
    assert client.delete(f"/items/{path_of(item)}").status_code == 404


def test_a_removed_bundle_item_comes_back_when_added_again(client, known):
    rec, _, items = known
    item, category = items[7], rec.bundle.categories[1]
    only_it = {"history": [items[0]], "k": 1, "allow_items": [item]}
    assert ids(client.post("/recommend", json=only_it)) == [item]
    assert client.delete(f"/items/{item}").json() == {"items": [item]}
    assert ids(client.post("/recommend", json=only_it)) == []
    assert client.get(f"/items/{item}/similar").status_code == 404
    assert client.get(f"/items/{item}").status_code == 404
    assert client.post("/items", json={"items": [{"item_id": item, "categories": [category]}]}).json() == {
        "items": [item]
    }
    assert ids(client.post("/recommend", json=only_it)) == [item]
    assert client.get(f"/items/{item}/similar").status_code == 200
    assert client.get(f"/items/{item}").json()["item_id"] == item


def test_similar_health_ready_metrics(client, known):
    _, _, items = known
    similar = client.get(f"/items/{items[0]}/similar", params={"k": 3}).json()
    assert len(similar["items"]) == 3 and items[0] not in {x["item_id"] for x in similar["items"]}
    assert client.get("/items/ghost/similar").status_code == 404
    assert client.get(f"/items/{items[0]}/similar", params={"k": 0}).status_code == 422
    too_many = client.get(f"/items/{items[0]}/similar", params={"k": 51})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["query", "k"]
    assert client.get("/healthz").json() == {"status": "ok", "model_version": None}
    assert client.get("/readyz").json()["status"] == "ready"
    metrics = client.get("/metrics").text
    assert 'twotower_requests_total{endpoint="/recommend"' in metrics
    assert 'endpoint="/items/{item_id}/similar"' in metrics  # the template, not the convertor's spelling
    assert "twotower_request_seconds_bucket" in metrics and "twotower_errors_total" in metrics


def test_openapi_documents_every_field(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]
    assert set(schema) == {"user_id", "history", "k", "exclude_seen", "exclude_items", "allow_items",
                           "diversity", "max_per_category", "calibrate", "explore", "seed", "explain",
                           "context", "features"}  # fmt: skip
    assert all(prop.get("description") for prop in schema.values())


def test_openapi_states_the_servers_limits_and_every_status(client):
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert request["k"]["maximum"] == 50 and request["k"]["minimum"] == 1
    history = next(alt for alt in request["history"]["anyOf"] if alt.get("type") == "array")
    assert history["maxItems"] == 30 and request["exclude_items"]["maxItems"] == 100_000
    entries = history["items"]["anyOf"]  # ids: either, or a search
    assert [alt.get("type") for alt in entries] == ["string", "integer", None]
    assert "SearchEntry" in entries[2]["$ref"]
    assert history["items"]["anyOf"][0]["maxLength"] == 256
    events = schema["components"]["schemas"]["EventsRequest"]["properties"]["events"]
    assert events["maxItems"] == 1000
    operations = {
        (method.upper(), path): op for path, ops in schema["paths"].items() for method, op in ops.items()
    }
    similar = operations["GET", "/items/{item_id}/similar"]
    assert next(p for p in similar["parameters"] if p["name"] == "k")["schema"]["maximum"] == 50
    expected = {("POST", "/recommend"): {"413", "422", "503"}, ("GET", "/items/{item_id}/similar"): {"404", "422"},
                ("POST", "/events"): {"413", "422", "503"}, ("POST", "/items"): {"409", "413", "422", "503"},
                ("DELETE", "/items/{item_id}"): {"404", "422", "503"}, ("DELETE", "/users/{user_id}"): {"422", "503"},
                ("POST", "/admin/reload"): {"413", "422", "503"}, ("GET", "/readyz"): {"503"}}  # fmt: skip
    for key, codes in expected.items():
        assert codes <= set(operations[key]["responses"]), key
    assert all("security" not in op for op in operations.values())  # no token configured: nothing needs one


def test_recommendations_run_off_the_event_loop(client, known, monkeypatch):
    from serving import routes

    assert not inspect.iscoroutinefunction(routes.recommend) and not inspect.iscoroutinefunction(
        routes.similar
    )
    live, items = client.app.state.live, known[2]
    original = live.recommend

    entered = threading.Event()

    def slow(*args, **kwargs):
        entered.set()
        time.sleep(2.0)  # stands for CPU work: it blocks whatever thread runs it
        return original(*args, **kwargs)

    monkeypatch.setattr(live, "recommend", slow)
    reader = threading.Thread(
        target=client.post, args=("/recommend",), kwargs={"json": {"history": [items[0]]}}
    )
    reader.start()
    assert entered.wait(30)  # the recommendation is running (polled, not a fixed sleep)
    start = time.perf_counter()
    write = client.post("/events", json={"events": [{"user_id": "fair", "item_id": items[1]}]})
    elapsed = time.perf_counter() - start
    reader.join()
    assert write.status_code == 200 and elapsed < 1.0  # not queued behind the 2 s recommendation


def test_serving_benchmark_writes_figures(run_and_bundle, tmp_path):
    from twotower.benchmarks.service import run

    result = run(run_and_bundle[1], tmp_path / "latency.json", n_users=20, http_seconds=1.0)
    saved = json.loads((tmp_path / "latency.json").read_text())
    assert saved["in_process"]["recommend"]["n"] == 60
    assert set(result["in_process"]["ranking"]) >= {"diversity", "calibrate", "explore"}
    for part in ("encode", "search", "recommend", "recommend_knobs_off", "recommend_without_rerank"):
        figures = result["in_process"][part]
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    store = result["in_process_with_store"]
    assert store["reads_only"]["p50_ms"] > 0 and store["after_new_event"]["p50_ms"] > 0
    web = result["http"]
    assert web["recommend"]["errors"] == 0 and web["noop"]["errors"] == 0 and web["ratio"] > 0
