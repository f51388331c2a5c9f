"""The HTTP API over a fake backend: each endpoint's answer, and every kind of bad input as a 4xx with a reason.

Most tests call the app in-process (Starlette's TestClient); the ones about the wire itself (a Content-Length
refused before the body is read) talk to a real uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from lookalike.api import BackendTimeout, BackendUnavailable, create_app
from lookalike.api.backend import SearchBackend
from lookalike.config.settings import Settings
from lookalike.state.search import QueryRejected, SearchResponse
from lookalike.testing.images import product_bytes, truncated

from api_support import BY_ID, CATALOGUE, FakeBackend, photo_of, serving

ERROR_KEYS = {"error", "detail", "request_id"}


_made: list[FastAPI] = []  # the apps make_client built


def make_client(backend: SearchBackend | None = None, **settings: Any) -> TestClient:
    app = create_app(backend or FakeBackend(), Settings(**settings))
    _made.append(app)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(autouse=True)
def _stop_readiness_readings() -> Iterator[None]:
    """A client used without ``with`` never runs the app's shutdown: its /readyz reading thread is stopped here,
    so it does not go on reading (and logging a broken backend's failure) for the rest of the session."""
    yield
    while _made:
        _made.pop().state.readiness.stop()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(backend: FakeBackend) -> TestClient:
    return make_client(backend)


def upload(client: TestClient, data: bytes, **fields: Any) -> Any:
    return client.post(
        "/v1/search",
        files={"image": ("photo.jpg", data, "image/jpeg")},
        data={name: str(value) for name, value in fields.items()},
    )


def assert_error(response: Any, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= ERROR_KEYS, body
    assert body["error"] == reason, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# ------------------------------------------------------------------------------------------------ searching
def test_an_uploaded_photo_finds_its_product_first(client: TestClient) -> None:
    response = upload(client, photo_of("p-orange-kettle"), k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["product_id"] == "p-orange-kettle"
    assert len(body["results"]) == 3
    assert isinstance(body["took_ms"], float)
    assert "facets" not in body


def test_the_results_are_exactly_the_query_models_json(client: TestClient, backend: FakeBackend) -> None:
    response = upload(client, photo_of("p-blue-jacket"), k=4, offset=1, facets="true")
    expected = backend.search(backend.requests[-1])
    body = response.json()
    assert body.pop("took_ms") >= 0
    assert body == expected
    assert set(body["results"][0]) == {
        "product_id", "name", "match", "score", "image_url", "product_url", "category", "price", "price_value",
        "matched",
    }


def test_multipart_fields_become_the_search_request(client: TestClient, backend: FakeBackend) -> None:
    upload(client, photo_of("p-red-sneaker"), k=7, offset=2, mode="semantic", category="Shoes", min_price=10,
           max_price="99.5", min_score="0.1", diverse="true", facets="True")
    sent = backend.requests[-1]
    assert (sent.k, sent.offset, sent.mode, sent.diverse, sent.facets) == (7, 2, "semantic", True, True)
    assert (sent.filters.category, sent.filters.min_price, sent.filters.max_price, sent.filters.min_score) == (
        "Shoes", 10.0, 99.5, 0.1
    )
    # The photo reaches the backend as the model's input: the 224x224 transport JPEG, made in the API.
    assert sent.prepared and sent.image is not None
    with Image.open(io.BytesIO(sent.image)) as reduced:
        assert (reduced.format, reduced.size) == ("JPEG", (224, 224))


def test_an_empty_form_field_is_refused_not_taken_as_absent(client: TestClient) -> None:
    """The schema promises a non-empty category and a number for a price; the page sends only filled ones."""
    assert_error(upload(client, photo_of("p-red-sneaker"), category=""), 422, "bad_filter")
    assert_error(upload(client, photo_of("p-red-sneaker"), min_price=""), 422, "bad_filter")


def test_words_find_the_product_named_by_them(client: TestClient) -> None:
    response = client.post("/v1/search", json={"text": "orange kettle", "k": 3})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["product_id"] == "p-orange-kettle"


def test_json_filters_and_facets_reach_the_backend(client: TestClient, backend: FakeBackend) -> None:
    response = client.post(
        "/v1/search",
        json={"text": "jacket coat", "mode": "keyword", "filters": {"category": "Jackets", "max_price": 100},
              "facets": True, "diverse": True},
    )
    assert response.status_code == 200, response.text
    assert [hit["product_id"] for hit in response.json()["results"]] == ["p-blue-jacket"]
    assert response.json()["facets"] == {"Clothing": 1, "Clothing | Jackets": 1}
    assert backend.requests[-1].filters.max_price == 100


def test_an_image_url_is_passed_to_the_backend_not_fetched_by_the_api(client: TestClient, backend: FakeBackend) -> None:
    url = backend.image_url(BY_ID["p-navy-coat"])
    response = client.post("/v1/search", json={"image_url": url})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["product_id"] == "p-navy-coat"
    assert backend.requests[-1].image_url == url


def test_more_like_this_leaves_the_product_out(client: TestClient) -> None:
    response = client.get("/v1/products/p-red-sneaker/similar", params={"k": 5})
    assert response.status_code == 200, response.text
    ids = [hit["product_id"] for hit in response.json()["results"]]
    assert "p-red-sneaker" not in ids
    assert ids[0] == "p-crimson-boot"


def test_more_like_this_takes_filters_as_query_parameters(client: TestClient, backend: FakeBackend) -> None:
    response = client.get(
        "/v1/products/p-red-sneaker/similar", params={"k": 2, "offset": 1, "category": "Garden", "min_price": 1}
    )
    assert response.status_code == 200, response.text
    sent = backend.requests[-1]
    assert (sent.product_id, sent.k, sent.offset, sent.filters.category) == ("p-red-sneaker", 2, 1, "Garden")
    assert all(hit["category"].startswith("Home & Garden") for hit in response.json()["results"])


# ------------------------------------------------------------------------------------------------ bad input
def test_an_unknown_product_is_a_404(client: TestClient) -> None:
    assert_error(client.get("/v1/products/no-such-thing/similar"), 404, "unknown_product")


def test_an_upload_over_the_limit_is_a_413(backend: FakeBackend) -> None:
    client = make_client(backend, max_upload_bytes=50_000)
    assert_error(upload(client, b"\xff" * 60_000), 413, "too_large")
    assert backend.requests == []


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body_is_sent(backend: FakeBackend) -> None:
    """Only the headers go out: the answer must come without the server waiting for (or reading) the body."""
    app = create_app(backend, Settings(max_upload_bytes=10_000))
    with serving(app) as base, socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 5000000000\r\n\r\n"
        )
        received = b""
        while b"}" not in received:  # the JSON body may follow the headers in a second packet
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    answer = received.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"error":"too_large"' in answer
    assert backend.requests == []


def test_a_chunked_body_is_cut_off_at_the_limit_while_it_streams(backend: FakeBackend) -> None:
    """No Content-Length: the app is fed chunks until the limit is crossed, then answers 413 without pulling
    the rest of the body."""
    app = create_app(backend, Settings(max_upload_bytes=100_000))
    chunk, chunks = b"x" * 16_384, 1000
    head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": head + chunk if pulled == 1 else chunk, "more_body": pulled < chunks}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/search", "raw_path": b"/v1/search", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b'"too_large"' in b"".join(message.get("body", b"") for message in sent)
    assert pulled <= 100_000 // len(chunk) + 1  # stopped at the chunk that crossed the limit
    assert backend.requests == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not an image at all", "not_an_image"),
        (truncated(product_bytes(20), keep=0.5), "truncated"),
    ],
    ids=["not an image", "truncated"],
)
def test_a_photo_the_decoder_refuses_is_a_422_with_its_reason(client: TestClient, data: bytes, reason: str) -> None:
    assert_error(upload(client, data), 422, reason)


def test_a_decompression_bomb_is_a_422() -> None:
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, "PNG")  # 400 Mpx in a few kB
    assert len(buffer.getvalue()) < 200_000
    assert_error(upload(make_client(), buffer.getvalue()), 422, "too_many_pixels")


def test_an_empty_upload_is_a_422(client: TestClient) -> None:
    assert_error(upload(client, b""), 422, "empty")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "bad_query"),
        ({"text": "red", "image_url": "https://images.example.com/a.jpg"}, "bad_query"),
        ({"text": "red", "k": 0}, "bad_k"),
        ({"text": "red", "k": "5"}, "bad_k"),
        ({"text": "red", "k": 101}, "bad_k"),
        ({"text": "red", "offset": -1}, "bad_offset"),
        ({"text": "red", "mode": "fuzzy"}, "bad_mode"),
        ({"text": "   "}, "bad_text"),
        ({"text": "red", "filters": {"min_price": 50, "max_price": 10}}, "bad_filter"),
        ({"text": "red", "filters": {"min_score": 2}}, "bad_filter"),
        ({"text": "red", "filters": {"colour": "red"}}, "bad_filter"),
        ({"text": "red", "page": 2}, "bad_query"),
        ({"image_url": "ftp://images.example.com/a.jpg"}, "bad_scheme"),
        # The scheme is checked before any address (the address guard is the backend's, see test_shoppers_api).
        ({"image_url": "gopher://127.0.0.1:6379/_INFO"}, "bad_scheme"),
        ({"image_url": "ftp://169.254.169.254/a.jpg"}, "bad_scheme"),
        ([1, 2], "bad_json"),
    ],
    ids=lambda value: str(value)[:60],
)
def test_missing_or_contradictory_json_fields_are_a_422(client: TestClient, body: Any, reason: str) -> None:
    assert_error(client.post("/v1/search", json=body), 422, reason)


def test_malformed_json_is_a_422(client: TestClient) -> None:
    response = client.post("/v1/search", content=b'{"text": ', headers={"content-type": "application/json"})
    assert_error(response, 422, "bad_json")


def test_a_multipart_search_without_a_photo_is_a_422(client: TestClient) -> None:
    assert_error(client.post("/v1/search", data={"k": "3"}, files={"other": ("a", b"b")}), 422, "bad_query")
    assert_error(client.post("/v1/search", files={"image": (None, "not a file")}), 422, "bad_image_field")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [({"k": "many"}, "bad_k"), ({"min_price": "-1"}, "bad_filter"), ({"mode": "x"}, "bad_mode"),
     ({"min_price": "9", "max_price": "3"}, "bad_filter"), ({"colour": "red"}, "bad_query"),
     ({"facets": "on"}, "bad_request")],
    ids=str,
)
def test_bad_multipart_fields_are_a_422(client: TestClient, fields: dict[str, str], reason: str) -> None:
    assert_error(upload(client, photo_of("p-white-mug"), **fields), 422, reason)


@pytest.mark.parametrize(
    ("params", "reason"),
    [({"k": "0"}, "bad_k"), ({"k": "x"}, "bad_k"), ({"offset": "5000"}, "bad_offset"),
     ({"min_price": "nan"}, "bad_filter"), ({"min_price": "5", "max_price": "1"}, "bad_filter"),
     ({"min_score": "-3"}, "bad_filter")],
    ids=str,
)
def test_bad_query_parameters_of_more_like_this_are_a_422(
    client: TestClient, params: dict[str, str], reason: str
) -> None:
    assert_error(client.get("/v1/products/p-red-sneaker/similar", params=params), 422, reason)


def test_a_body_that_is_neither_json_nor_multipart_is_a_415(client: TestClient) -> None:
    response = client.post("/v1/search", content=b"text=red", headers={"content-type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("reason", ["fetch_failed", "not_an_image", "too_many_pixels"])
def test_a_refused_image_is_a_422_with_the_backends_reason(backend: FakeBackend, reason: str) -> None:
    backend.fail = QueryRejected(reason, "no")
    response = make_client(backend).post("/v1/search", json={"image_url": "https://cdn.example.com/a.jpg"})
    assert_error(response, 422, reason)


def test_an_unreachable_broker_is_a_503_with_retry_after(backend: FakeBackend) -> None:
    backend.fail = BackendUnavailable("redis://broker:6379 refused the connection", retry_after=7)
    response = make_client(backend).post("/v1/search", json={"text": "red"})
    assert_error(response, 503, "unavailable")
    assert response.headers["retry-after"] == "7"


def test_no_answer_in_time_is_a_504(backend: FakeBackend) -> None:
    backend.fail = BackendTimeout("no query worker answered in 15 s")
    assert_error(make_client(backend).post("/v1/search", json={"text": "red"}), 504, "timeout")


def test_a_backend_that_hangs_past_the_deadline_is_a_504_too(backend: FakeBackend) -> None:
    backend.delay = 5
    client = make_client(backend, query_timeout=0.1, query_fetch_deadline=0.05)
    response = client.post("/v1/search", json={"text": "red"})
    assert_error(response, 504, "timeout")


def test_a_backend_bug_is_a_500_in_the_same_shape(backend: FakeBackend) -> None:
    backend.fail = RuntimeError("boom")
    response = make_client(backend).post("/v1/search", json={"text": "red"})
    body = assert_error(response, 500, "internal_error")
    assert "boom" not in body["detail"]


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/search"), 405, "method_not_allowed")


# ------------------------------------------------------------------------------------------------ keys and CORS
def test_with_api_keys_set_a_search_without_the_right_key_is_a_401() -> None:
    client = make_client(api_keys="key-one, key-two")
    assert_error(client.post("/v1/search", json={"text": "red"}), 401, "missing_api_key")
    assert_error(client.post("/v1/search", json={"text": "red"}, headers={"X-API-Key": "nope"}), 401, "bad_api_key")
    assert_error(client.get("/v1/products/p-red-sneaker/similar"), 401, "missing_api_key")
    assert client.post("/v1/search", json={"text": "red"}, headers={"X-API-Key": "key-two"}).status_code == 200


def test_with_api_keys_set_health_readiness_and_the_page_stay_open() -> None:
    client = make_client(api_keys="key-one")
    for path in ("/healthz", "/readyz", "/", "/static/page.js"):
        assert client.get(path).status_code == 200, path


def test_without_api_keys_the_schema_declares_no_security(client: TestClient) -> None:
    assert "security" not in client.get("/openapi.json").json()["paths"]["/v1/search"]["post"]
    secured = make_client(api_keys="k").get("/openapi.json").json()["paths"]["/v1/search"]["post"]
    assert secured["security"] == [{"APIKeyHeader": []}]


def test_cors_answers_only_the_configured_origins() -> None:
    client = make_client(cors_origins="https://shop.example.com")
    preflight = {"Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,x-api-key"}
    allowed = client.options("/v1/search", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example.com"
    refused = client.options("/v1/search", headers={**preflight, "Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in refused.headers
    plain = make_client().post("/v1/search", json={"text": "red"}, headers={"Origin": "https://shop.example.com"})
    assert "access-control-allow-origin" not in plain.headers


# ------------------------------------------------------------------------------------------------ operations
def test_healthz_answers_while_the_backend_is_down(backend: FakeBackend) -> None:
    backend.ready = {"broker": False, "store": False, "query_worker": False}
    response = make_client(backend).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_200_when_broker_store_and_a_query_worker_answer(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"broker": True, "store": True, "query_worker": True}}


def test_readyz_is_503_naming_what_is_missing(backend: FakeBackend) -> None:
    backend.ready = {"broker": True, "store": True, "query_worker": False}
    response = make_client(backend).get("/readyz")
    body = assert_error(response, 503, "not_ready")
    assert "query_worker" in body["detail"] and "broker" not in body["detail"]
    assert body["checks"]["query_worker"] is False
    assert "retry-after" in response.headers


def test_readyz_is_503_when_the_readiness_check_itself_fails() -> None:
    class Broken(FakeBackend):
        def readiness(self) -> dict[str, bool]:
            raise ConnectionError("redis down")

    body = assert_error(make_client(Broken()).get("/readyz"), 503, "not_ready")
    assert "broker" in body["detail"]


def test_an_app_that_stopped_and_serves_again_reads_its_readiness_again() -> None:
    app = create_app(FakeBackend(), Settings(_env_file=None))
    with TestClient(app) as client:  # startup, then shutdown: the reading thread ends with the app
        assert client.get("/readyz").status_code == 200
        reading = app.state.readiness._thread
    reading.join(3)
    assert not reading.is_alive()
    with TestClient(app) as client:  # served again (uvicorn restarted, schemathesis' own lifespan run)
        assert client.get("/readyz").status_code == 200


def test_readyz_answers_at_once_from_a_background_reading_and_a_stale_one_is_not_ready() -> None:
    import threading

    stuck = threading.Event()

    class Hanging(FakeBackend):
        """Answers the first reading, then hangs the way a dead broker's socket does."""

        def readiness(self) -> dict[str, bool]:
            if stuck.is_set():
                time.sleep(60)
            return super().readiness()

    client = make_client(Hanging())
    assert client.get("/readyz").status_code == 200
    stuck.set()
    started = time.monotonic()
    while client.get("/readyz").status_code == 200:  # each probe answers from the latest reading, at once
        assert time.monotonic() - started < 15, "a reading that stopped coming was trusted for too long"
        time.sleep(0.2)
    waited = time.monotonic() - started
    probe = time.monotonic()
    body = assert_error(client.get("/readyz"), 503, "not_ready")
    assert time.monotonic() - probe < 1 and 4 <= waited <= 10, waited
    assert body["checks"] == {"broker": False, "store": False, "query_worker": False}


def test_the_request_id_is_echoed_or_made_up(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made_up = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made_up)
    odd = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])


def test_every_log_line_of_a_request_carries_its_request_id(caplog: pytest.LogCaptureFixture) -> None:
    class Chatty(FakeBackend):
        def search(self, request: Any) -> SearchResponse:
            logging.getLogger("lookalike.backend").warning("searching in the backend thread")
            return super().search(request)

    client = make_client(Chatty())
    with caplog.at_level(logging.INFO):
        response = client.post("/v1/search", json={"text": "red"}, headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 200
    lines = [record for record in caplog.records if record.name.startswith("lookalike")]
    assert {record.getMessage().split()[0] for record in lines} >= {"search", "searching", "request"}
    assert {getattr(record, "request_id", None) for record in lines} == {"trace-42"}


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    client.get("/v1/products/p-red-sneaker/similar")
    client.get("/v1/products/p-blue-jacket/similar")
    client.get("/v1/products/nobody/similar")
    client.get("/no/such/path")
    text = client.get("/metrics").text
    route = 'route="/v1/products/{product_id}/similar"'
    assert f'lookalike_api_requests_total{{method="GET",{route},status="200"}} 2.0' in text
    assert f'lookalike_api_requests_total{{method="GET",{route},status="404"}} 1.0' in text
    assert f'lookalike_api_request_seconds_bucket{{le="0.005",method="GET",{route},status="200"}}' in text
    assert 'route="unmatched"' in text
    assert "p-red-sneaker" not in text and "/no/such/path" not in text


def test_an_unmatched_request_logs_its_path_and_the_favicon_is_served(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    with caplog.at_level(logging.INFO):
        assert client.get("/no/such/path").status_code == 404
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("request ")]
    assert len(lines) == 1 and lines[0].startswith("request method=GET route=unmatched path='/no/such/path' status=404")
    assert 'route="/favicon.ico"' in client.get("/metrics").text, "a route of its own, not unmatched"


def test_a_413_refused_on_its_headers_still_counts_under_its_route() -> None:
    client = make_client(max_upload_bytes=2048)
    upload(client, b"x" * 4096)
    assert 'route="/v1/search",status="413"' in client.get("/metrics").text


def test_the_docs_page_works_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/") for source in sources), sources
    for source in sources:
        assert client.get(source).status_code == 200, source


def test_the_page_is_served_from_the_package_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.text.count('type="file"') == 1 and page.text.count('type="search"') == 1
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/") and not link.startswith("//") for link in links), links
    script = client.get("/static/page.js").text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert not re.search(r"https?://", script)


def test_the_fake_catalogue_has_distinct_products() -> None:
    assert len({product.product_id for product in CATALOGUE}) == len(CATALOGUE)


def test_the_compose_api_service_is_checked_on_readyz() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["command"] == ["serve"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["environment"]["LOOKALIKE_API_ADDRESS"] == "0.0.0.0"
