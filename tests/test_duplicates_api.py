"""The duplicate listings over HTTP: the report and the decisions, with the API's keys and error body, over a
real Redis (the pairs and decisions are Redis state; the search backend is the tests' fake)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from lookalike.api import create_app
from lookalike.config.settings import Settings
from lookalike.producer.product import point_id_for
from lookalike.state.context import StateContext
from lookalike.state.duplicates import ImagePair
from lookalike.state.registry import ProductState

from api_support import FakeBackend

ERROR_KEYS = {"error", "detail", "request_id"}


def seed_pairs() -> StateContext:
    """Three listings of one photo (a group of three) and two of another (a group of two)."""
    ctx = StateContext()
    for product, price in [("a1", "$10"), ("a2", "$11"), ("a3", "$12"), ("b1", "$20"), ("b2", "$21")]:
        payload = {"name": f"Product {product}", "price": price, "product_url": f"https://shop/{product}",
                   "category": "Home | Mugs", "categories": ["Home", "Mugs"]}  # fmt: skip
        ctx.registry.apply(product, ProductState(1, False, payload, (f"http://img/{product}.jpg",)))

    def pair(a: str, b: str, score: float) -> ImagePair:
        return ImagePair.of(point_id_for(a, "i"), a, f"http://img/{a}.jpg", point_id_for(b, "i"), b,
                            f"http://img/{b}.jpg", score)  # fmt: skip

    ctx.duplicates.replace({}, [pair("a1", "a2", 0.999), pair("a2", "a3", 0.97), pair("b1", "b2", 0.98)])
    return ctx


def client(**settings: Any) -> TestClient:
    """The app with the environment's settings (the test's Redis database) and these ones on top."""
    return TestClient(create_app(FakeBackend(), Settings(**settings)), raise_server_exceptions=False)


def assert_error(response: Any, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= ERROR_KEYS and body["error"] == reason, body
    return dict(body)


@pytest.mark.usefixtures("env")
def test_the_report_lists_connected_groups_best_first_and_pages_them() -> None:
    seed_pairs()
    api = client()
    body = api.get("/v1/duplicates").json()
    assert body["total"] == 2
    groups = [[p["product_id"] for p in group["products"]] for group in body["groups"]]
    assert groups == [["a1", "a2", "a3"], ["b1", "b2"]]
    first = body["groups"][0]
    assert first["score"] == 0.999
    assert first["best_pair"]["a"] == "a1" and first["best_pair"]["b_image"] == "http://img/a2.jpg"
    assert first["products"][2] == {
        "product_id": "a3", "name": "Product a3", "price": "$12", "product_url": "https://shop/a3",
        "category": "Home | Mugs", "image_url": "http://img/a3.jpg",
    }  # fmt: skip
    assert [pair["threshold_source"] for pair in first["pairs"]] == ["LOOKALIKE_DUPLICATES_MIN_SCORE"] * 2

    second_page = api.get("/v1/duplicates", params={"offset": 1, "limit": 1}).json()
    assert [[p["product_id"] for p in g["products"]] for g in second_page["groups"]] == [["b1", "b2"]]
    raised = api.get("/v1/duplicates", params={"min_score": 0.985}).json()
    assert [[p["product_id"] for p in g["products"]] for g in raised["groups"]] == [["a1", "a2"]]
    assert raised["groups"][0]["best_pair"]["threshold_source"] == "min_score"
    assert api.get("/v1/duplicates", params={"category": "Garden"}).json()["total"] == 0
    assert api.get("/v1/duplicates", params={"category": "mugs"}).json()["total"] == 2


@pytest.mark.usefixtures("env")
def test_a_decision_posted_is_remembered_and_changes_the_report() -> None:
    ctx = seed_pairs()
    api = client()
    made = api.post("/v1/duplicates/decisions", json={"a": "b2", "b": "b1", "decision": "distinct"})
    assert made.status_code == 200, made.text
    assert made.json()["a"] == "b1" and made.json()["decision"] == "distinct"
    assert api.get("/v1/duplicates").json()["total"] == 1
    assert ctx.duplicates.decisions()[("b1", "b2")].decision == "distinct"
    # Changing one's mind replaces the decision.
    assert api.post("/v1/duplicates/decisions", json={"a": "b1", "b": "b2", "decision": "same"}).status_code == 200
    assert api.get("/v1/duplicates").json()["total"] == 2


@pytest.mark.usefixtures("env")
def test_bad_input_is_a_4xx_with_a_reason() -> None:
    seed_pairs()
    api = client()
    assert_error(api.get("/v1/duplicates", params={"min_score": 2}), 422, "bad_filter")
    assert_error(api.get("/v1/duplicates", params={"limit": 0}), 422, "bad_limit")
    assert_error(api.get("/v1/duplicates", params={"offset": -1}), 422, "bad_offset")
    decide = "/v1/duplicates/decisions"
    assert_error(api.post(decide, json={"a": "a1", "b": "nobody", "decision": "same"}), 404, "unknown_product")
    assert_error(api.post(decide, json={"a": "a1", "b": "a1", "decision": "same"}), 422, "bad_decision")
    assert_error(api.post(decide, json={"a": "a1", "b": "a2", "decision": "maybe"}), 422, "bad_decision")
    assert_error(api.post(decide, json={"a": "a1", "decision": "same"}), 422, "bad_product_id")
    assert_error(api.post(decide, content=b"{not json", headers={"Content-Type": "application/json"}), 422, "bad_json")
    assert_error(api.post(decide, data={"a": "a1", "b": "a2", "decision": "same"}), 415, "unsupported_media_type")


@pytest.mark.usefixtures("env")
def test_the_duplicates_routes_need_an_api_key_when_keys_are_set() -> None:
    seed_pairs()
    api = client(api_keys="k1,k2")
    assert_error(api.get("/v1/duplicates"), 401, "missing_api_key")
    assert_error(api.post("/v1/duplicates/decisions", json={}), 401, "missing_api_key")
    assert_error(api.get("/v1/duplicates", headers={"X-API-Key": "nope"}), 401, "bad_api_key")
    assert api.get("/v1/duplicates", headers={"X-API-Key": "k2"}).json()["total"] == 2


@pytest.mark.usefixtures("env")
def test_redis_unreachable_is_a_503_with_retry_after() -> None:
    api = client(broker_url="redis://127.0.0.1:1/0")
    response = api.get("/v1/duplicates")
    assert_error(response, 503, "unavailable")
    assert response.headers["retry-after"] == "5"
    decision = {"a": "x", "b": "y", "decision": "same"}
    assert_error(api.post("/v1/duplicates/decisions", json=decision), 503, "unavailable")
