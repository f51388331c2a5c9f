"""Where a query's work happens: its download and decode where it arrives (the API, the CLI), its embedding on
the shoppers' encode processes, the search alone on the store owner, so a slow or hostile query URL holds
neither the store owner nor an encode process."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from lookalike.state.search import SearchRequest
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route


def test_trickling_query_urls_hold_neither_the_store_owner_nor_the_encode_processes(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    from lookalike.app.gateway import Gateway
    from lookalike.config.settings import get_settings
    from lookalike.state.search import QueryRejected
    from lookalike.worker.tasks import audit

    start_worker()
    gateway = Gateway(get_settings())
    url = image_server.add("/split/a.jpg", Route(body=images.product_bytes(21)))
    assert cli("ingest", str(write_catalog(tmp_path / "c.csv", [catalog_row("s1", "S1", [url])])), "--wait").code == 0
    slow = [
        image_server.add(f"/split/slow{i}.jpg", Route(body=images.product_bytes(22 + i), trickle_seconds=30))
        for i in range(4)
    ]

    refusals: list[tuple[str, float]] = []

    def shopper(link: str) -> None:
        started = time.monotonic()
        try:
            gateway.search(SearchRequest(image_url=link, k=3), timeout=60)
        except QueryRejected as exc:
            refusals.append((exc.reason, time.monotonic() - started))

    shoppers = [threading.Thread(target=shopper, args=(link,)) for link in slow]
    for thread in shoppers:
        thread.start()
    time.sleep(0.5)  # the four downloads are trickling now
    assert all(thread.is_alive() for thread in shoppers)
    started = time.monotonic()
    report = audit.apply_async().get(timeout=10)  # work for the store owner
    upload = gateway.search(SearchRequest(image=images.product_bytes(21), k=3), timeout=20)  # an encode process
    others_seconds = time.monotonic() - started
    for thread in shoppers:
        thread.join(30)
    assert report["points_seen"] == 1
    assert upload.get("results", [{}])[0].get("product_id") == "s1", upload
    assert others_seconds < 3, f"the store owner and the encode process were held for {others_seconds:.1f}s"
    # Each slow URL stops at the query download deadline (2 s in the tests) with the one generic reason.
    assert sorted(reason for reason, _ in refusals) == ["fetch_failed"] * 4, refusals
    assert max(seconds for _, seconds in refusals) < 10, refusals


def test_the_store_owner_refuses_an_image_query_without_its_vector(env: dict[str, str], start_worker: Any) -> None:
    from lookalike.worker.tasks import search

    start_worker()
    refused = search.apply_async(args=[SearchRequest(image_url="http://127.0.0.1:1/x.jpg").to_message()]).get(
        timeout=20
    )
    assert refused["error"] == "not_encoded"
