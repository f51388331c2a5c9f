"""`lookalike reindex --model`: a shadow collection filled by the real workers while the live one answers, an
evaluation gate, a switch with no failed or mixed query, resumable, idempotent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike.config.settings import get_settings
from lookalike.state.search import QueryRejected, SearchRequest, SearchResponse
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.testing.tiny_model import build_tiny_model
from lookalike.worker import pipeline
from lookalike.worker.decode import decode_image, decode_transport, encode_for_transport
from lookalike.worker.embed import Embedder
from lookalike.worker.fingerprint import VISION_FILES, model_id
from lookalike.worker.model import ModelSpec
from lookalike.worker.ownership import read_record
from lookalike.worker.store import live_collection, open_collection

from conftest import LOOKALIKE, wait_for_run

PRODUCTS = 12


def catalog(server: ImageServer, directory: Path, prefix: str = "r") -> tuple[Path, dict[str, bytes]]:
    """Twelve products, one distinct image each; returns the CSV and product id -> image bytes."""
    rows, bodies = [], {}
    for i in range(PRODUCTS):
        body = images.product_bytes(300 + i, size=(320, 240))
        url = server.add(f"/{prefix}/p{i}.jpg", Route(body=body))
        bodies[f"p{i:02d}"] = body
        rows.append(catalog_row(f"p{i:02d}", f"Item {i} kettle lamp", [url]))
    return write_catalog(directory / "catalog.csv", rows), bodies


def fingerprint(directory: Path | str) -> str:
    return model_id("m", Path(directory), VISION_FILES).fingerprint


class Shopper(threading.Thread):
    """Queries through the workers, as the API would, all the time: every answer must put the photo's own
    product first (never empty, never a result of comparing two models' vectors)."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        super().__init__(daemon=True)
        self.bodies = bodies
        self.stop = threading.Event()
        self.answers = 0
        self.wrong: list[str] = []

    def run(self) -> None:
        from lookalike.app.gateway import Gateway

        gateway = Gateway(get_settings())
        products = sorted(self.bodies)
        n = 0
        while not self.stop.is_set():
            product = products[n % len(products)]
            n += 1
            try:
                answer = SearchResponse.from_data(gateway.search(SearchRequest(image=self.bodies[product], k=3)))
            except (QueryRejected, Exception) as exc:  # any failure is what this test is about
                self.wrong.append(f"{product}: {type(exc).__name__}: {exc}")
                continue
            self.answers += 1
            if not answer.results or answer.results[0].product_id != product:
                self.wrong.append(f"{product}: {[hit.product_id for hit in answer.results]}")

    def finish(self) -> None:
        self.stop.set()
        self.join(60)


@pytest.fixture
def int8_model(cli: Any, tmp_path: Path) -> Path:
    out = tmp_path / "int8"
    done = cli("model", "quantize", "--out", str(out), "--json")
    assert done.code == 0, done.stderr
    return out


def test_reindex_to_an_int8_copy_switches_with_every_product_embedded_by_it_and_no_failed_query(
    cli, env, server, tmp_path, start_worker, int8_model
):
    csv, bodies = catalog(server, tmp_path)
    start_worker()
    assert cli("ingest", str(csv), "--wait").code == 0
    settings = get_settings()
    old_live = live_collection(settings)
    shopper = Shopper(bodies)
    shopper.start()
    try:
        time.sleep(1)
        done = cli(
            "reindex", "--model", str(int8_model / "vision"), "--text-model", str(int8_model / "text"),
            "--sample", "12", "--json",
        )  # fmt: skip
        time.sleep(3)  # and after the switch, while the query encoders catch up with it
    finally:
        shopper.finish()
    assert done.code == 0, done.stderr
    assert done.stderr.count("broker redis://") == 1, done.stderr  # the broker is named once, as by every command
    report = done.json()
    assert report["switched"] is True, report["reason"]
    assert "within --max-drop" in report["reason"]
    assert report["filled"]["indexed"] == PRODUCTS
    assert set(report["eval"]) == {"live", "shadow"}
    assert report["eval"]["live"]["images"]["queried"] == report["eval"]["shadow"]["images"]["queried"] == PRODUCTS
    assert shopper.answers > 5 and shopper.wrong == []

    # The live collection is the shadow now, and records the int8 model (and what it replaced).
    new_live = live_collection(settings)
    assert new_live == report["shadow"] != old_live
    record = read_record(settings, new_live)
    assert record is not None
    assert record.vision.fingerprint == fingerprint(int8_model / "vision")
    assert record.replaces == old_live and record.previous == fingerprint(env["LOOKALIKE_MODEL_DIR"])
    ownership = cli("status", "--json").json()["collection_model"]
    assert ownership["collection"] == new_live
    assert ownership["recorded"]["vision"]["fingerprint"] == record.vision.fingerprint

    # Run again: nothing to do. --drop-old: the old collection goes.
    again = cli("reindex", "--model", str(int8_model / "vision"), "--text-model", str(int8_model / "text"), "--json")
    assert again.code == 0, again.stderr
    assert again.json()["switched"] is False and "already belongs" in again.json()["reason"]
    assert again.json()["caught_up"] == 0
    dropped = cli("reindex", "--drop-old", "--json")
    assert dropped.code == 0, dropped.stderr
    assert dropped.json() == {"dropped": [old_live]}
    assert not (settings.qdrant_path / old_live).exists()



def test_the_gate_refuses_a_model_that_ignores_the_image_and_the_live_collection_stays(
    cli, env, server, tmp_path, start_worker
):
    csv, bodies = catalog(server, tmp_path)
    start_worker()
    assert cli("ingest", str(csv), "--wait").code == 0
    settings = get_settings()
    live = live_collection(settings)
    blind = build_tiny_model(tmp_path / "blind", blind=True)

    refused = cli("reindex", "--model", str(blind), "--sample", "12", "--json")
    assert refused.code == 1, refused.stderr
    report = refused.json()
    assert report["switched"] is False
    assert "more than --max-drop 0.02, not switching" in report["reason"]
    assert report["eval"]["shadow"]["overall"]["recall@1"] < report["eval"]["live"]["overall"]["recall@1"] - 0.02
    # The live collection is as it was: same collection, same model, still answering.
    assert live_collection(settings) == live
    assert read_record(settings, live).vision.fingerprint == fingerprint(env["LOOKALIKE_MODEL_DIR"])
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(bodies["p04"])
    found = cli("search", str(photo), "-k", "1", "--json")
    assert found.code == 0 and found.json()[0]["product_id"] == "p04"
    shown = cli("reindex", "--model", str(blind), "--sample", "12")
    assert shown.code == 1 and "kept" in shown.stdout and "not switching" in shown.stdout


def test_killed_mid_way_then_run_again_it_ends_complete_with_the_events_of_meanwhile(
    cli, env, tmp_path, start_worker
):
    # Another model whose vectors differ from the first one's everywhere, so each point shows which made it.
    other = build_tiny_model(tmp_path / "other", seed=99)
    reindex = [LOOKALIKE, "reindex", "--model", str(other), "--sample", "12", "--max-drop", "0.3", "--json"]
    with ImageServer(latency_ms=300) as slow:
        csv, bodies = catalog(slow, tmp_path, prefix="slow")
        worker = start_worker()
        assert cli("ingest", str(csv), "--wait").code == 0
        settings = get_settings()
        command = subprocess.Popen(
            reindex,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        ctx = pipeline.current_context()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            (ctx.ledger.run(run_id) or {}).get("kind") == "reindex" for run_id in ctx.ledger.run_ids(5)
        ):
            time.sleep(0.05)
        os.killpg(command.pid, signal.SIGKILL)
        command.wait(10)
        assert live_collection(settings) == "products"  # killed before the switch

        # Meanwhile a change event adds a product: it reaches the live collection only.
        bodies["new"] = images.product_bytes(999, size=(320, 240))
        url = slow.add("/slow/new.jpg", Route(body=bodies["new"]))
        event = {
            "type": "product.upserted",
            "version": 1,
            "product": {"id": "new", "name": "New lamp", "image_urls": [url], "price": "$5.00"},
        }
        events = tmp_path / "events.jsonl"
        events.write_text(json.dumps(event) + "\n")
        assert cli("events", str(events)).code == 0
        listened = cli("listen", "--stop-when-idle", "1.5")
        assert listened.code == 0, listened.stderr
        wait_for_run("events")

        resumed = cli(*reindex[1:])
        assert resumed.code == 0, resumed.stderr
        report = resumed.json()
        assert report["switched"] is True, report["reason"]
        assert report["filled"]["points"] == PRODUCTS + 1  # everything, the event's product included
        photo = tmp_path / "new.jpg"
        photo.write_bytes(bodies["new"])
        found = cli("search", str(photo), "-k", "1", "--json")
        assert found.code == 0 and found.json()[0]["product_id"] == "new"

    # Every product's point holds the new model's vector of its image (the pipeline's own decode path).
    worker.stop()
    embedder = Embedder(ModelSpec(settings.model, other, None, 1))
    store = open_collection(settings, live_collection(settings))
    try:
        points = {payload["product_id"]: vector for _id, payload, vector in store.scroll(with_vectors=True)}
    finally:
        store.close()
    assert set(points) == set(bodies)
    for product, body in bodies.items():
        prepared = decode_image(body, max_pixels=settings.max_image_pixels, formats=settings.allowed_image_formats)
        expected = embedder.embed([decode_transport(encode_for_transport(prepared))])[0]
        assert np.allclose(np.asarray(points[product]), expected / np.linalg.norm(expected), atol=1e-4), product


def test_a_directory_without_a_model_is_one_line_and_exit_2(cli, env, tmp_path):
    result = cli("reindex", "--model", str(tmp_path / "nothing"))
    assert result.code == 2
    expected = f"error: {tmp_path / 'nothing'} has no model.onnx: not a model directory"
    assert result.stderr.strip().splitlines() == [expected]
    assert cli("reindex", "--model", str(tmp_path), "--max-drop", "2").code == 2
    assert cli("reindex", "--text-model", str(tmp_path)).code == 2
