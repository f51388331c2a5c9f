"""Where a query's work happens: its download, decode and embedding on the embedding processes (the encode
task), the search alone on the store owner, so a slow or hostile query URL never holds the store owner."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from lookalike.state.search import SearchRequest
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route


def test_a_trickling_query_url_does_not_hold_the_store_owner(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    from lookalike.app.gateway import ask_workers
    from lookalike.worker.app import app
    from lookalike.worker.tasks import audit

    start_worker()
    url = image_server.add("/split/a.jpg", Route(body=images.product_bytes(21)))
    assert cli("ingest", str(write_catalog(tmp_path / "c.csv", [catalog_row("s1", "S1", [url])])), "--wait").code == 0
    slow = image_server.add("/split/slow.jpg", Route(body=images.product_bytes(22), trickle_seconds=30))

    answers: list[dict[str, Any]] = []
    started = time.monotonic()
    query = threading.Thread(
        target=lambda: answers.append(ask_workers(app, SearchRequest(image_url=slow, k=3), timeout=60))
    )
    query.start()
    time.sleep(0.5)  # the encode task is now downloading
    assert query.is_alive()
    store_owner_started = time.monotonic()
    report = audit.apply_async().get(timeout=10)  # work for the store owner, queued behind nothing
    store_owner_seconds = time.monotonic() - store_owner_started
    query.join(60)
    assert report["points_seen"] == 1
    assert store_owner_seconds < 1.5, f"the store owner was held for {store_owner_seconds:.1f}s"
    # The download itself stops at its deadline (2 s in the tests), refused as data.
    assert answers and "error" in answers[0], answers
    assert time.monotonic() - started < 20


def test_the_store_owner_refuses_an_image_query_without_its_vector(env: dict[str, str], start_worker: Any) -> None:
    from lookalike.worker.tasks import search

    start_worker()
    refused = search.apply_async(args=[SearchRequest(image_url="http://127.0.0.1:1/x.jpg").to_message()]).get(
        timeout=20
    )
    assert refused["error"] == "not_encoded"
