"""Duplicate listings end to end: a catalogue with planted copies through the real pipeline and the installed
command (precision and recall with the tiny model), decisions that survive re-ingests and scans, change events
that keep the pairs true, the resumable scan, and the report's thresholds."""

from __future__ import annotations

import csv
import io
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lookalike.config.settings import DEFAULT_DUPLICATES_MIN_SCORE
from lookalike.producer.events import DELETED, UPSERTED, publish_event
from lookalike.producer.product import point_id_for
from lookalike.state.context import StateContext
from lookalike.state.duplicate_groups import Thresholds, build_groups
from lookalike.state.duplicates import ImagePair
from lookalike.state.registry import ProductState
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.duplicates import pairs_in_groups, planted_catalogue, precision_recall
from lookalike.testing.images import product_bytes
from lookalike.testing.server import ImageServer, Route
from lookalike.worker import pipeline

from conftest import LOOKALIKE, Snapshot, ingested_world, restore_snapshot, run_cli, set_env, wait_for_run

GOAL = 0.95


def serve_catalogue(server: ImageServer, directory: Path, originals: int = 20) -> tuple[Path, Any]:
    planted = planted_catalogue(originals=originals, uniques=originals)
    rows = []
    for listing in planted.listings:
        url = server.add(f"/dup/{listing.product_id}.jpg", Route(body=listing.image, content_type="image/jpeg"))
        rows.append(
            catalog_row(listing.product_id, listing.name, [url], category=listing.category, price=listing.price)
        )
    return write_catalog(directory / "catalog.csv", rows), planted


def reported_groups(cli: Any, *args: str) -> dict[str, Any]:
    done = cli("duplicates", "--json", *args)
    assert done.code == 0, done.stderr
    return dict(done.json())


def product_groups(report: dict[str, Any]) -> list[list[str]]:
    return [[product["product_id"] for product in group["products"]] for group in report["groups"]]


def measured(report: dict[str, Any], planted: Any) -> tuple[float, float]:
    return precision_recall(pairs_in_groups(product_groups(report)), planted.true_pairs())


# ------------------------------------------------------------------------------------------ precision, recall
def test_planted_copies_are_found_with_precision_and_recall_of_at_least_0_95_and_a_scan_finds_the_same(
    cli: Any, env: dict[str, str], server: ImageServer, tmp_path: Path
) -> None:
    catalog, planted = serve_catalogue(server, tmp_path)
    ingested = cli("ingest", str(catalog), "--wait", "--json", timeout=300)
    assert ingested.code == 0, ingested.stderr
    assert ingested.json()["result"]["indexed"] == len(planted.listings)

    # Found by the index stage's incremental check alone.
    incremental = reported_groups(cli, "--limit", "100")
    precision, recall = measured(incremental, planted)
    print(f"\nincremental: precision {precision:.3f} recall {recall:.3f} at {DEFAULT_DUPLICATES_MIN_SCORE}")
    assert precision >= GOAL and recall >= GOAL
    assert incremental["total"] == len(incremental["groups"]) >= len(planted.groups) - 1
    best = incremental["groups"][0]
    assert best["score"] >= incremental["groups"][-1]["score"], "best evidence first"
    assert best["best_pair"]["threshold"] == DEFAULT_DUPLICATES_MIN_SCORE
    assert best["best_pair"]["threshold_source"] == "LOOKALIKE_DUPLICATES_MIN_SCORE"
    by_id = planted.by_id()
    for product in best["products"]:
        assert product["name"] == by_id[product["product_id"]].name
        assert product["price"] == by_id[product["product_id"]].price
        assert product["product_url"] == f"https://www.example.com/dp/{product['product_id']}"

    # An index built before this feature: no pairs on record; the full scan finds the same groups.
    ctx = StateContext()
    ctx.redis.delete(ctx.duplicates.pairs_key)
    assert reported_groups(cli)["total"] == 0
    scanned = cli("duplicates", "scan", "--page", "50", "--json")
    assert scanned.code == 0, scanned.stderr
    assert "no worker is running: scanning for duplicates in this process" in scanned.stderr
    state = scanned.json()
    assert state["done"] and state["scanned"] == len(planted.listings)
    after_scan = reported_groups(cli, "--limit", "100")
    assert sorted(product_groups(after_scan)) == sorted(product_groups(incremental))

    status = cli("duplicates", "status", "--json")
    assert status.code == 0, status.stderr
    assert status.json()["groups"] == incremental["total"]
    assert status.json()["scan"]["done"] is True


# ------------------------------------------------------------------------------------------ decisions
def two_listings_of_one_photo(server: ImageServer, directory: Path) -> Path:
    photo = server.add("/same/photo.jpg", Route(body=product_bytes(77)))
    again = server.add("/same/photo-again.jpg", Route(body=product_bytes(77)))
    other = server.add("/same/other.jpg", Route(body=product_bytes(78)))
    elsewhere = server.add("/same/elsewhere.jpg", Route(body=product_bytes(79)))
    rows = [
        catalog_row("seller-a", "Teapot", [photo], price="$30.00"),
        catalog_row("seller-b", "Teapot (seller B)", [again], price="$28.00"),
        catalog_row("kettle", "Kettle", [other], price="$20.00"),
        catalog_row("kettle-new-id", "Kettle, relisted", [elsewhere], price="$20.00"),
    ]
    return write_catalog(directory / "catalog.csv", rows)


@pytest.fixture(scope="module")
def two_listings_indexed(shared_server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Snapshot, Path]:
    """The four listings ingested once, by the local workers `ingest --wait` starts (no worker running)."""
    directory = tmp_path_factory.mktemp("two-listings")
    catalog = two_listings_of_one_photo(shared_server, directory)

    def ingest(environment: dict[str, str]) -> None:
        done = run_cli(["ingest", str(catalog), "--wait", "--json"], environment)
        assert done.code == 0, done.stderr

    return ingested_world(directory, ingest), catalog


@pytest.fixture
def two_listings(env: dict[str, str], redis_client: Any, two_listings_indexed: tuple[Snapshot, Path]) -> Path:
    """This test's own copy of the four listings' index and state (no worker running); the catalogue's path."""
    snapshot, catalog = two_listings_indexed
    restore_snapshot(snapshot, redis_client, Path(env["LOOKALIKE_QDRANT_PATH"]))
    return catalog


def test_a_pair_marked_distinct_never_comes_back_through_a_reingest_and_a_full_scan(
    cli: Any, env: dict[str, str], two_listings: Path
) -> None:
    catalog = two_listings
    assert product_groups(reported_groups(cli)) == [["seller-a", "seller-b"]]

    marked = cli("duplicates", "mark", "seller-b", "seller-a", "--distinct")
    assert marked.code == 0, marked.stderr
    assert marked.stdout.strip() == "marked seller-a and seller-b distinct"
    assert reported_groups(cli)["total"] == 0

    # Re-ingest everything (the index stage checks every point again), then a full scan from the start.
    again = cli("ingest", str(catalog), "--wait", "--full", "--json")
    assert again.code == 0 and again.json()["result"]["indexed"] == 4
    assert StateContext().duplicates.count_pairs() == 1, "the pair is still detected, only not reported"
    assert reported_groups(cli)["total"] == 0
    assert cli("duplicates", "scan", "--restart").code == 0
    assert reported_groups(cli)["total"] == 0
    assert cli("reconcile", "--json").code == 0
    assert reported_groups(cli)["total"] == 0
    status = cli("duplicates", "status", "--json").json()
    assert status["decisions"] == {"distinct": 1, "same": 0} and status["groups"] == 0

    # A pair marked same stays grouped though its photos differ.
    assert cli("duplicates", "mark", "kettle", "kettle-new-id", "--same").code == 0
    report = reported_groups(cli)
    assert product_groups(report) == [["kettle", "kettle-new-id"]]
    assert report["groups"][0]["best_pair"]["decision"] == "same"
    assert report["groups"][0]["score"] is None


def test_reconcile_forgets_the_pairs_of_the_orphan_points_it_deletes(
    cli: Any, env: dict[str, str], two_listings: Path
) -> None:
    assert recorded_products() == {frozenset({"seller-a", "seller-b"})}
    # The registry says seller-b is gone, but its delete never reached the store (a lost reconcile job).
    StateContext().registry.apply("seller-b", ProductState(2**52, True, {}, ()))
    done = cli("reconcile", "--json")
    assert done.code == 0, done.stderr
    assert done.json()["orphan_points_deleted"] == 1
    assert recorded_products() == set()


def test_mark_refuses_unknown_products_and_contradictory_flags_in_one_line(
    cli: Any, env: dict[str, str], redis_client: Any
) -> None:
    StateContext().registry.apply("known", ProductState(1, False, {"name": "Known"}, ("http://x/1.jpg",)))
    cases = [
        (("known", "nobody", "--distinct"), "error: unknown product 'nobody' (not in the registry)"),
        (("known", "known", "--same"), "error: give two different product ids"),
        (("known", "nobody"), "error: give exactly one of --distinct and --same"),
        (("known", "nobody", "--same", "--distinct"), "error: give exactly one of --distinct and --same"),
    ]
    for args, message in cases:
        done = cli("duplicates", "mark", *args)
        assert done.code == 2, done.stderr
        # One error line; a check that needs the registry names the broker first (every command does, once).
        lines = done.stderr.strip().splitlines()
        assert lines[-1] == message
        assert [line for line in lines[:-1] if not line.startswith("lookalike: broker ")] == []
    assert cli("duplicates", "--json", "--csv").code == 2


# ------------------------------------------------------------------------------------------ events
def listen(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOOKALIKE, "listen", "--stop-when-idle", "1.5"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def upsert(product_id: str, version: int, urls: list[str]) -> dict[str, Any]:
    return {
        "type": UPSERTED,
        "version": version,
        "product": {"id": product_id, "name": f"Product {product_id}", "category": "Home | Kitchen",
                    "price": 10.0, "product_url": f"https://shop.example/{product_id}", "image_urls": urls},
    }  # fmt: skip


def publish(events: list[dict[str, Any]], redis_client: Any) -> None:
    for event in events:
        publish_event(event, client=redis_client, stream=pipeline.current_context().settings.events_stream)


def recorded_products() -> set[frozenset[str]]:
    return {frozenset(pair.products) for pair in StateContext().duplicates.pairs()}


def test_events_keep_the_pairs_true_a_deleted_duplicate_leaves_none_and_a_swapped_image_makes_one(
    cli: Any, env: dict[str, str], server: ImageServer, start_worker: Any, redis_client: Any
) -> None:
    photo = [server.add(f"/ev/{i}.jpg", Route(body=product_bytes(300 + i))) for i in range(4)]
    copy_of_0 = server.add("/ev/copy-0.jpg", Route(body=product_bytes(300)))
    start_worker()
    publish(
        [
            upsert("original", 1, [photo[0]]),
            upsert("copy", 1, [copy_of_0]),
            upsert("two-images", 1, [photo[1], photo[2]]),
            upsert("lonely", 1, [photo[3]]),
        ],
        redis_client,
    )
    assert listen(env).returncode == 0
    wait_for_run("events")
    assert recorded_products() == {frozenset({"original", "copy"})}

    # The copy is deleted: its pair goes with it (the record itself, not only the report).
    publish([{"type": DELETED, "version": 2, "product_id": "copy"}], redis_client)
    assert listen(env).returncode == 0
    wait_for_run("events")
    assert recorded_products() == set()

    # One of two images swapped for the original's photo (another URL, same picture): a pair appears.
    swapped = server.add("/ev/swapped.jpg", Route(body=product_bytes(300)))
    publish([upsert("two-images", 2, [photo[1], swapped])], redis_client)
    assert listen(env).returncode == 0
    wait_for_run("events")
    assert recorded_products() == {frozenset({"original", "two-images"})}
    pair = next(iter(StateContext().duplicates.pairs()))
    assert {pair.a_image, pair.b_image} == {photo[0], swapped}

    # A scan through the running store worker (page tasks) finds the same, and only that.
    StateContext().redis.delete(StateContext().duplicates.pairs_key)
    scanned = cli("duplicates", "scan", "--page", "2", "--json")
    assert scanned.code == 0, scanned.stderr
    assert "in this process" not in scanned.stderr
    assert scanned.json()["done"] and scanned.json()["scanned"] == 4  # original, two-images (2), lonely
    assert recorded_products() == {frozenset({"original", "two-images"})}

    # That image removed again: the pair leaves with it.
    publish([upsert("two-images", 3, [photo[1]])], redis_client)
    assert listen(env).returncode == 0
    wait_for_run("events")
    assert recorded_products() == set()


# ------------------------------------------------------------------------------------------ the scan
def test_an_interrupted_scan_resumes_where_it_stopped(
    cli: Any, env: dict[str, str], server: ImageServer, tmp_path: Path
) -> None:
    catalog, planted = serve_catalogue(server, tmp_path, originals=4)
    assert cli("ingest", str(catalog), "--wait", "--json", timeout=300).code == 0
    from lookalike.worker.duplicates import scan_stage

    ctx = pipeline.current_context()
    try:
        first = scan_stage(ctx, restart=True, page=10)
    finally:
        pipeline.reset_context()
    assert first["scanned"] == 10 and not first["done"]
    resumed = cli("duplicates", "scan", "--page", "10", "--json")
    assert resumed.code == 0, resumed.stderr
    assert f"resuming the scan at 10 of {len(planted.listings)} points" in resumed.stderr
    state = resumed.json()
    assert state["done"] and state["scanned"] == len(planted.listings)


# ------------------------------------------------------------------------------------------ thresholds
def test_each_pair_gets_the_threshold_of_its_category_and_the_report_names_it(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, env, LOOKALIKE_DUPLICATES_CATEGORY_MIN_SCORE="Clothing | T-Shirts=0.99;Posters=0.9")
    ctx = StateContext()
    shirts = {"categories": ["Clothing", "T-Shirts"], "name": "Plain tee"}
    mugs = {"categories": ["Home", "Mugs"], "name": "Mug"}
    for product, payload in [("tee-1", shirts), ("tee-2", shirts), ("mug-1", mugs), ("mug-2", mugs)]:
        ctx.registry.apply(product, ProductState(1, False, payload, (f"http://img/{product}.jpg",)))

    def pair(a: str, b: str, score: float) -> ImagePair:
        return ImagePair.of(point_id_for(a, "x"), a, f"http://img/{a}.jpg", point_id_for(b, "x"), b,
                            f"http://img/{b}.jpg", score)  # fmt: skip

    ctx.duplicates.replace({}, [pair("tee-1", "tee-2", 0.97), pair("mug-1", "mug-2", 0.97)])
    thresholds = Thresholds.from_settings(ctx.settings)
    assert thresholds.floor == 0.9
    groups = build_groups(ctx.duplicates, ctx.registry, thresholds)
    assert [[p["product_id"] for p in g["products"]] for g in groups] == [["mug-1", "mug-2"]]
    assert groups[0]["best_pair"]["threshold_source"] == "LOOKALIKE_DUPLICATES_MIN_SCORE"

    raised = build_groups(ctx.duplicates, ctx.registry, Thresholds.from_settings(ctx.settings, min_score=0.98))
    assert raised == []
    assert Thresholds.from_settings(ctx.settings).for_levels(["Posters"]) == (
        0.9,
        "category 'Posters' (LOOKALIKE_DUPLICATES_CATEGORY_MIN_SCORE)",
    )
    # A product whose image changed since: its old evidence is never shown, even before reconcile ran.
    ctx.registry.apply("mug-2", ProductState(2, False, mugs, ("http://img/mug-2-new.jpg",)))
    assert build_groups(ctx.duplicates, ctx.registry, thresholds) == []


def test_a_malformed_category_threshold_is_one_line_and_exit_2(cli: Any) -> None:
    done = cli("duplicates", extra={"LOOKALIKE_DUPLICATES_CATEGORY_MIN_SCORE": "Shirts=high"})
    assert done.code == 2
    assert done.stderr.strip() == (
        "error: LOOKALIKE_DUPLICATES_CATEGORY_MIN_SCORE: 'Shirts=high': the score is not a number"
    )


def test_the_csv_report_has_one_row_per_product_with_the_threshold(
    cli: Any, env: dict[str, str], two_listings: Path
) -> None:
    done = cli("duplicates", "--csv")
    assert done.code == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [row["product_id"] for row in rows] == ["seller-a", "seller-b"]
    assert {row["group"] for row in rows} == {"1"}
    assert rows[0]["price"] == "$30.00" and rows[1]["name"] == "Teapot (seller B)"
    assert rows[0]["threshold_source"] == "LOOKALIKE_DUPLICATES_MIN_SCORE"
    assert float(rows[0]["group_score"]) >= DEFAULT_DUPLICATES_MIN_SCORE
