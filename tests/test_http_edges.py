"""The edges of HTTP on `lookalike serve` (the installed command, real uvicorn on 127.0.0.1): slow headers and
bodies, clients that leave, more connections than the limit, and log lines a request cannot forge."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve import Serving, http

LIMITS = {"LOOKALIKE_API_READ_TIMEOUT": "1", "LOOKALIKE_API_BODY_TIMEOUT": "3", "LOOKALIKE_API_MAX_CONNECTIONS": "8"}


@pytest.fixture
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[Serving]:
    served = Serving({**env, **LIMITS}, tmp_path / "serve.log")
    yield served
    served.stop()


def connect(served: Serving) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_connection_whose_headers_trickle_is_closed_and_others_are_served(serving: Serving) -> None:
    slow = connect(serving)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    started = time.monotonic()
    closed_after = None
    for _ in range(40):  # one header byte every 0.1 s: each inside any idle timeout, never a whole request
        try:
            slow.sendall(b"X")
            if not slow.recv(1, socket.MSG_DONTWAIT):
                closed_after = time.monotonic() - started
                break
        except BlockingIOError:
            pass
        except OSError:
            closed_after = time.monotonic() - started
            break
        assert http("GET", serving.base + "/healthz")[0] == 200
        time.sleep(0.1)
    slow.close()
    assert closed_after is not None and closed_after < 3, closed_after


def test_a_body_that_stalls_is_a_408_and_the_connection_closes(serving: Serving) -> None:
    sock = connect(serving)
    sock.sendall(
        b'POST /v1/search HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"te'
    )
    started = time.monotonic()
    answer = read_all(sock)  # the server answers, then closes
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "body_timeout"
    assert time.monotonic() - started < 5


def test_a_client_that_leaves_mid_body_is_one_log_line_and_no_500(serving: Serving) -> None:
    for _ in range(3):
        sock = connect(serving)
        sock.sendall(
            b"POST /v1/search HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="image"; filename="q"\r\n\r\n'
            + b"x"
            * 1000
        )
        time.sleep(0.3)
        sock.close()
    time.sleep(0.5)
    assert http("GET", serving.base + "/healthz")[0] == 200
    log = serving.log.read_text()
    assert log.count("the client closed the connection") == 3, log
    assert "Traceback" not in log and "status=500" not in log, log
    assert log.count("status=499") == 3, log


def test_past_the_connection_limit_a_request_is_refused_503_at_once(serving: Serving) -> None:
    idle = [connect(serving) for _ in range(8)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        sock = connect(serving)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert http("GET", serving.base + "/healthz")[0] == 200


def test_a_newline_in_an_image_url_cannot_forge_a_log_line(serving: Serving) -> None:
    forged = "http://127.0.0.1:1/x.jpg\n2026-01-01 00:00:00 INFO lookalike.api FORGED line"
    status, _headers, body = http(
        "POST",
        serving.base + "/v1/search",
        json.dumps({"image_url": forged}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status in (422, 503), body
    log = serving.log.read_text()
    assert not any(line.startswith("2026-01-01") for line in log.splitlines()), log
    assert "\\n2026-01-01 00:00:00 INFO lookalike.api FORGED line" in log, log


def raw_get(served: Serving, path: str, host: str = "a") -> tuple[bytes, dict[str, str], bytes]:
    sock = connect(served)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    answer = read_all(sock)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status.encode(), headers, body


def test_no_redirect_is_built_from_the_host_header(serving: Serving) -> None:
    status, headers, _body = raw_get(serving, "/v1/search/", host="evil.example")
    assert status.startswith(b"HTTP/1.1 404") and "location" not in headers, (status, headers)
    status, headers, _body = raw_get(serving, "/healthz/", host="evil.example")
    assert "evil.example" not in json.dumps(headers)


def test_the_docs_page_has_the_security_headers_of_the_search_page(serving: Serving) -> None:
    import base64
    import hashlib
    import re

    status, headers, body = raw_get(serving, "/docs")
    assert status.startswith(b"HTTP/1.1 200")
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy and "unsafe-eval" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    # Its one inline script is allowed by its hash, and nothing else inline is.
    (script,) = re.findall(rb"<script>(.*?)</script>", body, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    for path in ("/docs-static/swagger-ui-bundle.js", "/openapi.json"):
        status, headers, _body = raw_get(serving, path)
        assert status.startswith(b"HTTP/1.1 200"), path
        assert headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
