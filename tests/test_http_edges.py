"""HTTP edges (review A, findings 8 and 11): metric labels from a fixed set whatever the client sends, what a
422 says (a bad history entry by its place, text lengths in characters, a body nested too deeply) and item
search over items added live."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving.app import create_app
from serving.settings import Settings

JSON = {"content-type": "application/json"}
METHOD_LABELS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
LONG = "x" * 5000


@pytest.fixture(scope="module")
def client(run_and_bundle, tmp_path_factory):
    settings = Settings(bundle=str(run_and_bundle[1]), state_dir=str(tmp_path_factory.mktemp("state")))
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def labels(client: TestClient, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of metric family ``name`` now."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    return [s.labels for f in families if f.name == name for s in f.samples]


def templates(routes: list) -> set[str]:
    """Every route template of the app (an included router keeps its routes in its original router)."""
    out: set[str] = set()
    for route in routes:
        nested = getattr(getattr(route, "original_router", None), "routes", [])
        out |= templates(nested) | {getattr(route, "path_format", None)} - {None}
    return out


def test_metric_labels_come_from_a_fixed_set_whatever_the_client_sends(client):
    for i in range(5):
        assert client.request(f"M{i:03d}XYZ", "/recommend").status_code == 405
    assert client.request("PROPFIND", "/nowhere").status_code in (404, 405)
    for path in ("/nowhere", "/nowhere/at/all", "/items/a/b/c", "/static/absent.js", "/recommend/"):
        assert client.get(path).status_code in (307, 404, 405)
    routes = templates(client.app.routes) | {"unmatched"}
    requests = labels(client, "twotower_requests")
    assert requests and {x["method"] for x in requests} <= METHOD_LABELS
    for family in ("twotower_requests", "twotower_errors", "twotower_request_seconds"):
        assert {x["endpoint"] for x in labels(client, family)} <= routes, family
    odd = [x for x in requests if x["method"] == "other" and x["endpoint"] == "/recommend"]
    assert len(odd) == 1  # the five odd methods share one series (per status)


ENTRY = "an item id"  # the start of what every type mismatch says an entry may be


@pytest.mark.parametrize(
    ("history", "loc", "says"),
    [
        ("[true]", ["body", "history", 0], ENTRY),
        ('[["a"]]', ["body", "history", 0], ENTRY),
        ("[null]", ["body", "history", 0], ENTRY),
        ('["1", 1.5]', ["body", "history", 1], ENTRY),
        ('["\\ud800"]', ["body", "history", 0], "valid Unicode"),
        ('[{"query": "a", "x": 1}]', ["body", "history", 0, "x"], '{"query": text}'),
        ("[{}]", ["body", "history", 0, "query"], "required"),
        ('["1", {"query": ""}]', ["body", "history", 1, "query"], "at least 1 character"),
        ('["1", {"query": 5}]', ["body", "history", 1, "query"], "valid string"),
        (f'["{"y" * 300}"]', ["body", "history", 0], "at most 256 characters"),
    ],
)
def test_a_bad_history_entry_is_named_by_its_place_and_says_what_an_entry_may_be(client, history, loc, says):
    response = client.post("/recommend", content=f'{{"history": {history}}}'.encode(), headers=JSON)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == loc and says in error["msg"]
    assert "0x" not in response.text and "function" not in response.text  # no validator reprs


def test_good_history_entries_still_pass(client):
    body = {"history": ["1", 7, 7.0, {"query": "something to watch"}], "k": 2}
    assert client.post("/recommend", json=body).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "loc", "limit"),
    [
        ("POST", "/recommend", {"user_id": LONG}, ["body", "user_id"], 256),
        ("POST", "/recommend", {"history": ["1"], "exclude_items": [LONG]}, ["body", "exclude_items", 0], 256),
        ("POST", "/recommend", {"history": [{"query": LONG}]}, ["body", "history", 0, "query"], 512),
        ("POST", "/recommend", {"history": ["1"], "context": {"d": LONG}}, ["body", "context", "d"], 128),
        ("POST", "/events", {"events": [{"user_id": LONG, "item_id": "1"}]}, ["body", "events", 0, "user_id"], 256),
        ("POST", "/events", {"events": [{"user_id": "u", "item_id": "1", "event": LONG}]},
         ["body", "events", 0, "event"], 64),
        ("POST", "/events", {"events": [{"user_id": "u", "query": LONG}]}, ["body", "events", 0, "query"], 512),
        ("POST", "/items", {"items": [{"item_id": "n", "categories": [LONG]}]},
         ["body", "items", 0, "categories", 0], 256),
        ("POST", "/admin/reload", {"bundle": LONG}, ["body", "bundle"], 4096),
        ("POST", "/audiences", {"items": [LONG]}, ["body", "items", 0], 256),
        ("GET", f"/items?q={LONG}", None, ["query", "q"], 200),
    ],
)  # fmt: skip
def test_a_text_length_error_counts_characters(client, method, path, body, loc, limit):
    response = client.request(method, path, json=body)
    assert response.status_code == 422
    [error] = [e for e in response.json()["detail"] if e["loc"] == loc]
    assert error["msg"] == f"String should have at most {limit} characters"


def test_a_body_nested_too_deeply_is_called_that(client):
    deep = b'{"history": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = client.post("/recommend", content=deep, headers=JSON)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"] and "too deeply" in error["msg"] and "UTF-8" not in error["msg"]
    not_utf8 = client.post("/recommend", content=b'{"history": ["\xff"]}', headers=JSON)
    assert not_utf8.status_code == 422 and "UTF-8" in not_utf8.json()["detail"][0]["msg"]


def found(client: TestClient, q: str, limit: int = 50) -> list[str]:
    response = client.get("/items", params={"q": q, "limit": limit})
    assert response.status_code == 200
    return [x["item_id"] for x in response.json()["items"]]


def test_item_search_finds_items_added_live_by_id_and_never_removed_ones(client):
    rec = client.app.state.live.recommender
    category = rec.bundle.categories[1]
    new = {"items": [{"item_id": "Live-77", "categories": [category]}]}
    assert client.post("/items", json=new).status_code == 200
    assert found(client, "live-77") == found(client, "Live-77") == ["Live-77"]  # case-insensitive, as titles
    [info] = client.get("/items", params={"q": "Live-77"}).json()["items"]
    assert info == client.get("/items/Live-77").json() and info["categories"] == [category]
    assert found(client, "live-7") == []  # an id is matched whole; only titles by substring
    by_title = found(client, "item")
    assert len(by_title) > 2 and "Item" not in by_title  # the tiny bundle's titles are "Item <n>"
    assert (
        client.post("/items", json={"items": [{"item_id": "Item", "categories": [category]}]}).status_code
        == 200
    )
    assert found(client, "item", limit=2) == ["Item", by_title[0]]  # the id first, then titles by popularity
    assert client.delete("/items/Live-77").status_code == 200
    assert found(client, "Live-77") == []
    bundle_item = rec.item_ids[3]
    assert bundle_item in found(client, bundle_item)
    assert client.delete(f"/items/{bundle_item}").status_code == 200
    assert bundle_item not in found(client, bundle_item)
    assert (
        client.post(
            "/items", json={"items": [{"item_id": bundle_item, "categories": [category]}]}
        ).status_code
        == 200
    )
    assert found(client, bundle_item).count(bundle_item) == 1  # restored: found once, as a bundle item
