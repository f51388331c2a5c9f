"""The index converges whatever was lost: a delete always reaches the store, and `lookalike reconcile` repairs a
lost registry (orphan points deleted) and a lost store (missing images enqueued again)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.worker import pipeline

from conftest import open_test_store, wait_for_run


def _catalog(server: ImageServer, directory: Path, ids: list[int], name: str, renamed: str = "") -> Path:
    rows = [
        catalog_row(
            f"r{i}",
            f"Reconciled {i}{renamed if i == 1 else ''}",
            [server.add(f"/rc/{i}-{j}.jpg", Route(body=images.product_bytes(i * 2 + j))) for j in range(2)],
        )
        for i in ids
    ]
    return write_catalog(directory / name, rows)


def _store_products() -> dict[str, int]:
    store = open_test_store()
    try:
        counts: dict[str, int] = {}
        for _id, payload, _vector in store.scroll():
            counts[payload["product_id"]] = counts.get(payload["product_id"], 0) + 1
        return counts
    finally:
        store.close()


def test_a_delete_for_a_product_the_registry_lost_still_reaches_the_store(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    worker = start_worker()
    assert cli("ingest", str(_catalog(image_server, tmp_path, [1, 2], "a.csv")), "--wait").code == 0
    pipeline.current_context().registry.clear()  # the registry is lost (a flushed Redis, say)
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"type": "product.deleted", "version": 10**13, "product_id": "r1"}) + "\n")
    assert cli("events", str(events)).code == 0
    listened = cli("listen", "--stop-when-idle", "1")
    assert listened.code == 0, listened.stderr
    assert "1 missing" in listened.stderr
    run_ids = pipeline.current_context().ledger.run_ids(1)
    wait_for_run(run_ids[0], timeout=60)
    assert worker.stop() == 0
    assert _store_products() == {"r2": 2}


def test_reconcile_deletes_orphans_after_a_lost_registry_and_requeues_after_a_lost_store(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    worker = start_worker()
    assert cli("ingest", str(_catalog(image_server, tmp_path, [1, 2, 3], "a.csv")), "--wait").code == 0
    assert worker.stop() == 0
    # The registry is lost, and meanwhile product 3 left the catalogue: nothing else knows its points exist.
    pipeline.current_context().registry.clear()
    # ... and product 1 was renamed.
    without_3 = _catalog(image_server, tmp_path, [1, 2], "b.csv", renamed=" (new name)")
    repaired = cli("reconcile", str(without_3), "--json")
    assert repaired.code == 0, repaired.stderr
    report = repaired.json()
    assert (report["store_points"], report["orphan_points_deleted"], report["orphan_products"]) == (6, 2, 1)
    assert (report["missing_images_enqueued"], report["payloads_updated"]) == (0, 1)
    assert report["catalog"]["products"] == 2
    assert _store_products() == {"r1": 2, "r2": 2}
    store = open_test_store()
    try:
        assert {p["name"] for _id, p, _v in store.scroll(product_id="r1")} == {"Reconciled 1 (new name)"}
    finally:
        store.close()

    # Now the store is lost: the registry still says four images are indexed.
    shutil.rmtree(env["LOOKALIKE_QDRANT_PATH"])
    requeued = cli("reconcile", "--json")
    assert requeued.code == 0, requeued.stderr
    assert (requeued.json()["store_points"], requeued.json()["missing_images_enqueued"]) == (0, 4)
    worker = start_worker()
    run = wait_for_run(requeued.json()["run_id"], timeout=90)
    assert run["indexed"] == 4
    assert worker.stop() == 0
    assert _store_products() == {"r1": 2, "r2": 2}

    again = cli("reconcile", "--json")
    assert again.code == 0, again.stderr
    assert (again.json()["orphan_points_deleted"], again.json()["missing_images_enqueued"]) == (0, 0)
