"""Shoppers first at the HTTP API (`lookalike serve` and real workers): searches admitted up to a bound and
refused 503 ``overloaded`` at once past it, /readyz answering at once while searches are busy, a burst of big
uploads answered 200 or 503 with the API's memory and Redis bounded, and a shopper's URL under its own policy."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from test_serve import Serving, http, multipart

from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route


def timed(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, float, Any]:
    started = time.monotonic()
    status, _headers, answer = http(method, url, body, headers)
    return status, time.monotonic() - started, answer


def search_json(serving: Serving, body: dict[str, Any]) -> tuple[int, float, Any]:
    return timed("POST", serving.base + "/v1/search", json.dumps(body).encode(), {"Content-Type": "application/json"})


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_past_the_admitted_searches_a_search_is_refused_503_at_once_and_readyz_still_answers(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    start_worker()
    url = image_server.add("/adm/a.jpg", Route(body=images.product_bytes(41)))
    assert cli("ingest", str(write_catalog(tmp_path / "c.csv", [catalog_row("a1", "A1", [url])])), "--wait").code == 0
    slow = [
        image_server.add(f"/adm/slow{i}.jpg", Route(body=images.product_bytes(42), trickle_seconds=30))
        for i in range(2)
    ]
    serving = Serving(
        {**env, "LOOKALIKE_API_MAX_SEARCHES": "2", "LOOKALIKE_QUERY_FETCH_DEADLINE": "4"}, tmp_path / "serve.log"
    )
    try:
        assert http("GET", serving.base + "/readyz")[0] == 200
        held: list[tuple[int, float, Any]] = []
        holders = [
            threading.Thread(target=lambda u=u: held.append(search_json(serving, {"image_url": u}))) for u in slow
        ]
        for thread in holders:
            thread.start()
        time.sleep(1.0)  # both admitted searches are downloading their trickling URLs
        status, seconds, answer = search_json(serving, {"text": "a1"})
        assert status == 503 and answer["error"] == "overloaded" and seconds < 1, (status, seconds, answer)
        body, headers = multipart(images.product_bytes(41))
        status, _headers, answer = http("POST", serving.base + "/v1/search", body, headers)
        assert status == 503 and answer["error"] == "overloaded"
        assert {k.lower(): v for k, v in _headers.items()}["retry-after"] == "1"
        # Probes never wait behind searches.
        for _ in range(5):
            status, seconds, _ = timed("GET", serving.base + "/readyz")
            assert status == 200 and seconds < 1, seconds
            status, seconds, _ = timed("GET", serving.base + "/healthz")
            assert status == 200 and seconds < 1, seconds
        for thread in holders:
            thread.join(30)
        assert [(s, a["error"]) for s, _, a in held] == [(422, "fetch_failed")] * 2, held
        assert max(seconds for _, seconds, _ in held) < 10
        status, _headers, answer = http("POST", serving.base + "/v1/search", body, headers)
        assert status == 200 and answer["results"][0]["product_id"] == "a1"
    finally:
        serving.stop()


def test_a_burst_of_big_uploads_is_answered_200_or_503_with_memory_bounded(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any, redis_client: Any
) -> None:
    start_worker()
    url = image_server.add("/burst/a.jpg", Route(body=images.product_bytes(43)))
    assert cli("ingest", str(write_catalog(tmp_path / "c.csv", [catalog_row("b1", "B1", [url])])), "--wait").code == 0
    noise = np.random.default_rng(3).integers(0, 256, (1200, 1400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=1)
    body, headers = multipart(buffer.getvalue())
    assert len(body) > 5_000_000
    serving = Serving({**env, "LOOKALIKE_API_MAX_SEARCHES": "3"}, tmp_path / "serve.log")
    try:
        rss_before = _peak_rss_mib(serving.process.pid)
        redis_before = int(redis_client.info("memory")["used_memory"])
        redis_peak = redis_before
        answers: list[int] = []
        gate = threading.Barrier(16)

        def upload() -> None:
            gate.wait()
            answers.append(http("POST", serving.base + "/v1/search", body, headers)[0])

        uploads = [threading.Thread(target=upload) for _ in range(16)]
        for thread in uploads:
            thread.start()
        while any(thread.is_alive() for thread in uploads):
            redis_peak = max(redis_peak, int(redis_client.info("memory")["used_memory"]))
            time.sleep(0.02)
        assert sorted(set(answers)) == [200, 503], answers
        # At most 3 bodies held at once, each reduced to a 224x224 JPEG before it goes anywhere.
        assert _peak_rss_mib(serving.process.pid) - rss_before < 200
        assert (redis_peak - redis_before) / 2**20 < 8
    finally:
        serving.stop()


def test_a_shoppers_url_on_a_network_only_the_catalogue_may_reach_is_fetch_failed(
    env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    start_worker()
    url = image_server.add("/private/a.jpg", Route(body=images.product_bytes(44)))
    serving = Serving(
        {**env, "LOOKALIKE_FETCH_ALLOW_NETWORKS": "127.0.0.0/8", "LOOKALIKE_QUERY_ALLOW_NETWORKS": ""},
        tmp_path / "serve.log",
    )
    try:
        for target in (url, "http://127.0.0.1:1/closed.jpg", "http://169.254.169.254/latest/meta-data/"):
            status, _seconds, answer = search_json(serving, {"image_url": target})
            assert (status, answer["error"]) == (422, "fetch_failed"), (target, answer)
        status, _seconds, answer = search_json(serving, {"image_url": "gopher://127.0.0.1:6379/_INFO"})
        assert (status, answer["error"]) == (422, "bad_scheme")
    finally:
        serving.stop()
    assert image_server.hits() == 0
    log = serving.log.read_text()
    assert log.count("reason=forbidden_address") == 3, log
