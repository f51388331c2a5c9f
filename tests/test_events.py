"""Catalogue change events end to end: stream -> `lookalike listen` -> real worker -> embedded Qdrant."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from typing import Any

import pytest

from lookalike.producer.events import DELETED, UPSERTED, publish_event
from lookalike.producer.product import Product, point_id_for
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.worker import pipeline

from conftest import LOOKALIKE, open_test_store, wait_for_run

POOL = 4  # images available per product


def image_pool(server: ImageServer, products: int) -> dict[str, list[str]]:
    pool = {}
    for p in range(products):
        pool[f"sku-{p:03d}"] = [
            server.add(f"/cat/{p:03d}-{i}.jpg", Route(body=images.product_bytes(p * POOL + i))) for i in range(POOL)
        ]
    return pool


def upsert(product_id: str, version: int, urls: list[str], name: str, price: float) -> dict[str, Any]:
    return {
        "type": UPSERTED,
        "version": version,
        "product": {
            "id": product_id,
            "name": name,
            "description": f"{name} description",
            "category": "Home | Kitchen",
            "price": price,
            "product_url": f"https://shop.example/{product_id}",
            "image_urls": urls,
        },
    }


def delete(product_id: str, version: int) -> dict[str, Any]:
    return {"type": DELETED, "version": version, "product_id": product_id}


def expected_points(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The model of the catalogue: the newest version of each product decides its points and payloads."""
    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        product_id = event["product_id"] if event["type"] == DELETED else event["product"]["id"]
        if product_id not in latest or event["version"] > latest[product_id]["version"]:
            latest[product_id] = event
    points = {}
    for event in latest.values():
        if event["type"] == DELETED:
            continue
        body = event["product"]
        product = Product.build(
            id=body["id"],
            name=body["name"],
            image_urls=body["image_urls"],
            description=body["description"],
            category=body["category"],
            price=f"${body['price']:.2f}",
            product_url=body["product_url"],
        )
        for url in product.image_urls:
            payload = {k: v for k, v in product.payload().items() if v is not None}
            # One point per product, its first image's, carries the facet flag.
            points[point_id_for(product.id, url)] = {
                **payload,
                "image_url": url,
                "primary": int(url == product.image_urls[0]),
            }
    return points


def store_points() -> dict[str, dict[str, Any]]:
    store = open_test_store()
    try:
        return {
            point_id: {k: v for k, v in payload.items() if k != "image_sha256"}
            for point_id, payload, _ in store.scroll()
        }
    finally:
        store.close()


def listen(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOOKALIKE, "listen", "--stop-when-idle", "1.5", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_shuffled_duplicated_events_leave_exactly_the_latest_catalogue(env, image_server, start_worker, redis_client):
    rng = random.Random(5)
    pool = image_pool(image_server, 200)
    events = []
    for product_id, urls in pool.items():
        for version in range(1, 6):
            if rng.random() < 0.2:
                events.append(delete(product_id, version))
            else:
                chosen = rng.sample(urls, rng.randint(0, POOL))
                events.append(
                    upsert(product_id, version, chosen, f"{product_id} v{version}", rng.choice([9.99, 19.5, 30]))
                )
    assert len(events) == 1000
    delivered = events + rng.sample(events, 150)  # some arrive twice
    rng.shuffle(delivered)  # and out of order

    worker = start_worker()
    for event in delivered:
        publish_event(event, client=redis_client, stream=pipeline.current_context().settings.events_stream)
    done = listen(env)
    assert done.returncode == 0, done.stderr
    run = wait_for_run("events")
    assert run.get("failed", 0) == 0
    assert worker.stop() == 0

    expected = expected_points(events)
    assert store_points() == expected  # the right points, the right payloads, no orphans

    stats = pipeline.current_context().ledger.stats()
    assert stats["events:handled"] + stats["events:stale"] == len(delivered)
    assert stats["events:stale"] >= 150
    assert stats.get("events:failed", 0) == 0


def test_price_change_costs_no_download_and_no_embedding(cli, env, image_server, start_worker, tmp_path, redis_client):
    urls = [image_server.add(f"/p/{i}.jpg", Route(body=images.product_bytes(i))) for i in range(6)]
    rows = [catalog_row(f"sku-{i}", f"Product {i}", [urls[2 * i], urls[2 * i + 1]], price="$10.00") for i in range(3)]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    assert cli("ingest", str(catalog), "--wait", "--json").code == 0

    stats_before = pipeline.current_context().ledger.stats()
    hits_before = image_server.hits()
    worker = start_worker()
    publish_event(
        {
            "type": UPSERTED,
            "version": 2**50,
            "product": {"id": "sku-1", "name": "Product 1", "description": "A product.", "price": "$7.50",
                        "category": "Toys & Games | Building Toys", "product_url": "https://www.example.com/dp/sku-1",
                        "image_urls": [urls[2], urls[3]]},
        },
        client=redis_client,
        stream=pipeline.current_context().settings.events_stream,
    )  # fmt: skip
    assert listen(env).returncode == 0
    wait_for_run("events")
    assert worker.stop() == 0

    stats = pipeline.current_context().ledger.stats()
    assert image_server.hits() == hits_before, "a price change downloaded an image"
    assert stats.get("embed_calls", 0) == stats_before.get("embed_calls", 0), "a price change called the model"
    assert stats.get("embedded", 0) == stats_before.get("embedded", 0)
    assert stats["events:changed"] == 1
    points = store_points()
    prices = {p["product_id"]: p["price"] for p in points.values()}
    assert prices == {"sku-0": "$10.00", "sku-1": "$7.50", "sku-2": "$10.00"}
    assert len(points) == 6


def test_killed_listener_restarts_without_losing_or_doubling_events(env, image_server, start_worker, redis_client):
    rng = random.Random(11)
    pool = image_pool(image_server, 60)
    events = []
    for product_id, urls in pool.items():
        for version in (1, 2, 3):
            events.append(upsert(product_id, version, rng.sample(urls, 2), f"{product_id}/{version}", 10.0 + version))
    rng.shuffle(events)
    stream = pipeline.current_context().settings.events_stream
    for event in events:
        publish_event(event, client=redis_client, stream=stream)
    worker = start_worker()

    listener = subprocess.Popen(
        [LOOKALIKE, "listen", "--consumer", "listener-a", "--batch", "10"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stats_key = pipeline.current_context().ledger.stats_key
    deadline = time.monotonic() + 60
    while int(redis_client.hget(stats_key, "events:handled") or 0) < 30:
        assert time.monotonic() < deadline, "the listener made no progress"
        time.sleep(0.05)
    os.killpg(listener.pid, signal.SIGKILL)
    listener.wait()
    handled_at_kill = int(redis_client.hget(stats_key, "events:handled") or 0)
    assert handled_at_kill < len(events), "killed too late to prove anything"

    done = listen(env, "--consumer", "listener-a", "--batch", "10")
    assert done.returncode == 0, done.stderr
    wait_for_run("events")
    assert redis_client.xpending(stream, pipeline.current_context().settings.events_group)["pending"] == 0
    assert worker.stop() == 0
    assert store_points() == expected_points(events)


def test_malformed_events_are_rejected_with_the_field_and_the_stream_keeps_flowing(
    env, image_server, start_worker, redis_client, cli
):
    stream = pipeline.current_context().settings.events_stream
    good_url = image_server.add("/ok.jpg", Route(body=images.product_bytes(1)))
    bad_entries = [
        "{not json",
        json.dumps({"type": "product.renamed", "version": 1, "product_id": "x"}),
        json.dumps({"type": UPSERTED, "version": 1, "product": {"name": "no id", "image_urls": []}}),
        json.dumps({"type": UPSERTED, "version": 1, "product": {"id": "x", "image_urls": "http://a/b.jpg"}}),
        json.dumps({"type": DELETED, "version": "soon", "product_id": "x"}),
    ]
    for raw in bad_entries:
        redis_client.xadd(stream, {"event": raw})
    publish_event(upsert("good", 1, [good_url], "Good", 1.0), client=redis_client, stream=stream)
    worker = start_worker()
    assert listen(env).returncode == 0
    wait_for_run("events")
    assert worker.stop() == 0

    rejected = cli("events", "--rejected", "--json").json()
    reasons = sorted((item["reason"], item["field"]) for item in rejected)
    assert reasons == sorted(
        [
            ("invalid_json", None),
            ("unknown_type", "type"),
            ("missing_field", "product.id"),
            ("invalid_field", "product.image_urls"),
            ("invalid_field", "version"),
        ]
    )
    assert all(item["event"] for item in rejected)
    stats = pipeline.current_context().ledger.stats()
    assert stats["events:failed"] == 5
    assert stats["events:handled"] == 1
    assert list(store_points()) == [point_id_for("good", good_url)]
    status = cli("status", "--json").json()
    assert status["events"]["failed"] == 5


def test_events_command_publishes_valid_lines_and_reports_bad_ones(cli, env, redis_client, tmp_path):
    lines = [
        json.dumps(delete("a", 1)),
        "",
        json.dumps({"type": UPSERTED, "version": 1, "product": {"id": "b"}}),
        json.dumps(upsert("c", 3, ["https://cdn.example/c.jpg"], "C", 2.0)),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = cli("events", str(path), "--json")
    assert result.code == 1
    assert result.json() == {"stream": "lookalike:events", "published": 2, "rejected": 1}
    assert "line 3" in result.stderr and "missing_field: product.image_urls" in result.stderr
    entries = redis_client.xrange("lookalike:events")
    assert [json.loads(fields[b"event"])["type"] for _id, fields in entries] == [DELETED, UPSERTED]


def test_ingest_prune_removes_products_gone_from_the_catalogue(cli, env, image_server, tmp_path):
    urls = [image_server.add(f"/q/{i}.jpg", Route(body=images.product_bytes(100 + i))) for i in range(5)]
    rows = [catalog_row(f"sku-{i}", f"P{i}", [urls[i]]) for i in range(5)]
    full = write_catalog(tmp_path / "full.csv", rows)
    smaller = write_catalog(tmp_path / "smaller.csv", rows[:3])
    assert cli("ingest", str(full), "--wait", "--json").code == 0
    assert len(store_points()) == 5

    kept = cli("ingest", str(smaller), "--wait", "--json")
    assert kept.code == 0 and kept.json()["pruned"] is None
    assert len(store_points()) == 5, "without --prune nothing is removed"

    pruned = cli("ingest", str(smaller), "--wait", "--prune", "--json")
    assert pruned.code == 0, pruned.stderr
    assert pruned.json()["pruned"] == 2
    assert {p["product_id"] for p in store_points().values()} == {"sku-0", "sku-1", "sku-2"}


@pytest.mark.parametrize("field", ["name", "description", "category", "product_url"])
def test_any_field_change_is_an_in_place_update(field, env, redis_client):
    """The sync plan for a changed field: no job, one reconcile (store side), counted as changed."""
    from lookalike.producer.sync import plan_upserts

    registry = pipeline.current_context().registry
    base = Product.build(id="x", name="n", image_urls=["https://cdn/x.jpg"], description="d", category="c",
                         product_url="https://shop/x")  # fmt: skip
    first = plan_upserts(registry, [(base, 1)], "r")
    registry.settle(first.settle)
    assert len(first.jobs) == 1
    changed = Product.build(**{**base.to_dict(), field: "https://shop/y" if field == "product_url" else "new"})
    second = plan_upserts(registry, [(changed, 2)], "r")
    assert second.jobs == [] and second.reconcile == ["x"] and second.outcomes == {"changed": 1}


def test_unsettled_change_is_redone_when_delivered_again(env, redis_client):
    """A producer that died after registering a change but before enqueuing it: the redelivery redoes it."""
    from lookalike.producer.sync import plan_upserts

    registry = pipeline.current_context().registry
    product = Product.build(id="y", name="n", image_urls=["https://cdn/1.jpg", "https://cdn/2.jpg"])
    lost = plan_upserts(registry, [(product, 7)], "r")  # registered, then the producer "dies": never settled
    assert len(lost.jobs) == 2
    again = plan_upserts(registry, [(product, 7)], "r")
    assert {job.image_url for job in again.jobs} == set(product.image_urls)
    assert again.outcomes == {"redone": 1}
    registry.settle(again.settle)
    duplicate = plan_upserts(registry, [(product, 7)], "r")
    assert duplicate.jobs == [] and duplicate.outcomes == {"stale": 1}


def test_unsettled_delete_is_redone_and_stale_upserts_cannot_resurrect(env, redis_client):
    from lookalike.producer.sync import plan_deletes, plan_upserts

    registry = pipeline.current_context().registry
    product = Product.build(id="z", name="n", image_urls=["https://cdn/z.jpg"])
    registry.settle(plan_upserts(registry, [(product, 1)], "r").settle)
    assert plan_deletes(registry, [("z", 5)]).reconcile == ["z"]  # not settled
    assert plan_deletes(registry, [("z", 5)]).reconcile == ["z"]  # redelivered: reconciled again
    late = plan_upserts(registry, [(product, 4)], "r")
    assert late.jobs == [] and late.outcomes == {"stale": 1}
    state = registry.get("z")
    assert state is not None and state.deleted and state.version == 5
