"""Search like a shopper, through the installed command and a real worker: words (keyword mode here; the
CLIP text side is tested with the tiny text model in test_search_text.py), every filter alone and combined,
facets, more like this, diversity, pages, one result per product; and `reindex` of an index made by the
previous release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.worker import pipeline

from conftest import Snapshot, WorkerProcess, ingested_world, open_test_store, restore_snapshot, run_cli, wait_for_run

PRODUCTS = [
    # id, name, category, price, image seeds
    ("kettle", "Stainless electric kettle", "Home & Kitchen | Kitchen Appliances | Kettles", "$25.00", (1, 2)),
    ("teapot", "Porcelain teapot with infuser", "Home & Kitchen | Dining | Teapots", "$40.00", (3,)),
    ("mug", "Ceramic travel mug", "Home & Kitchen | Dining | Mugs", "$9.50", (4, 5)),
    ("jacket", "Blue denim jacket", "Clothing | Women | Jackets", "$60.00", (6,)),
    ("scarf", "Wool scarf in grey", "Clothing | Women | Scarves", "$15.00", (7, 8, 9)),
    ("puzzle", "Jigsaw puzzle of a lighthouse", "Toys & Games | Puzzles", "$12.50", (10,)),
    ("drone", "Quadcopter drone with camera", "Toys & Games | Drones", "", (11, 12)),
    ("blocks", "Wooden building blocks", "Toys & Games | Building Toys", "$30.00", (13,)),
]


@pytest.fixture(scope="module")
def shop_indexed(
    shared_server: ImageServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Snapshot, dict[str, Any]]:
    """The shop ingested once, through a worker that then stops."""
    directory = tmp_path_factory.mktemp("search-shop")
    rows = [
        catalog_row(
            pid,
            name,
            [
                shared_server.add(f"/shop/{pid}/{seed}.jpg", Route(body=images.product_bytes(seed * 37)))
                for seed in seeds
            ],
            category=category,
            price=price,
            description=f"{name}. A fine product.",
        )
        for pid, name, category, price, seeds in PRODUCTS
    ]
    catalog = write_catalog(directory / "shop.csv", rows)
    photo = directory / "scarf.jpg"
    photo.write_bytes(images.resized_copy(images.product_bytes(8 * 37), 0.7, fmt="JPEG", quality=80))

    def ingest(environment: dict[str, str]) -> None:
        worker = WorkerProcess(environment)
        try:
            worker.wait_ready(5)
            done = run_cli(["ingest", str(catalog), "--wait", "--json"], environment)
            assert done.code == 0, done.stderr
        finally:
            assert worker.stop() == 0, worker.output()
            Path(worker.log.name).unlink(missing_ok=True)

    return ingested_world(directory, ingest), {"catalog": catalog, "photo": photo, "rows": rows}


@pytest.fixture
def shop(
    env: dict[str, str], redis_client: Any, start_worker: Any, shop_indexed: tuple[Snapshot, dict[str, Any]]
) -> dict[str, Any]:
    """This test's own copy of the shop's index and state, and a worker on it; its images are on ``server``."""
    snapshot, made = shop_indexed
    restore_snapshot(snapshot, redis_client, Path(env["LOOKALIKE_QDRANT_PATH"]))
    start_worker()
    return made


def ids(result: Any) -> list[str]:
    return [hit["product_id"] for hit in result.json()]


def test_words_filters_facets_similar_and_pages_through_a_worker(
    cli: Any, shop: dict[str, Any], server: ImageServer
) -> None:
    photo = str(shop["photo"])
    # Words, keyword mode: a rare word finds its product first, and says which signal found it.
    found = cli("search", "--text", "lighthouse", "--mode", "keyword", "--json")
    assert found.code == 0, found.stderr
    assert ids(found) == ["puzzle"] and found.json()[0]["matched"] == ["keyword"]
    assert ids(cli("search", "--text", "porcelain infuser", "--mode", "keyword", "--json"))[0] == "teapot"

    # An image: its product first; one entry per product; every field there.
    ranked = cli("search", photo, "-k", "8", "--json").json()
    assert ranked[0]["product_id"] == "scarf" and ranked[0]["price_value"] == 15.0
    assert len({hit["product_id"] for hit in ranked}) == len(ranked) == 8
    assert ranked[0]["category"] == "Clothing | Women | Scarves" and ranked[0]["matched"] == ["image"]

    # Every filter alone and combined, on an image query and on a word query.
    assert set(ids(cli("search", photo, "-k", "8", "--category", "Home & Kitchen", "--json"))) == {
        "kettle",
        "teapot",
        "mug",
    }
    assert set(ids(cli("search", photo, "-k", "8", "--category", "Dining", "--json"))) == {"teapot", "mug"}
    priced = cli("search", photo, "-k", "8", "--min-price", "20", "--max-price", "45", "--json").json()
    assert {hit["product_id"] for hit in priced} == {"kettle", "teapot", "blocks"}
    assert all(20 <= hit["price_value"] <= 45 for hit in priced)
    assert ids(cli("search", photo, "-k", "8", "--max-price", "10", "--json")) == ["mug"]
    combined = cli("search", photo, "-k", "8", "--category", "Toys & Games", "--min-price", "20", "--json")
    assert ids(combined) == ["blocks"]
    top = cli("search", photo, "-k", "8", "--min-score", str(ranked[0]["score"] - 1e-4), "--json")
    assert ids(top) == ["scarf"]
    assert ids(cli("search", "--text", "jacket", "--mode", "keyword", "--category", "Toys & Games", "--json")) == []

    # A bad filter value is a one-line error naming it.
    bad = cli("search", photo, "--min-price", "50", "--max-price", "10")
    assert bad.code == 2 and bad.stderr.strip().count("\n") == 0 and "min_price" in bad.stderr
    negative = cli("search", photo, "--min-score", "3")
    assert negative.code == 2 and "min_score" in negative.stderr

    # Facets: a tree of category paths, products (not images) counted over the query's matches (a match above
    # 0) under every filter but the category one.
    from lookalike.state.categories import facet_tree

    faceted = cli("search", photo, "--facets", "--category", "Home & Kitchen", "--json").json()
    assert set(faceted) == {"results", "facets", "no_close_match"}
    assert {hit["product_id"] for hit in faceted["results"]} <= {"kettle", "teapot", "mug"}
    found = [hit for hit in ranked if hit["match"] > 0]
    assert faceted["facets"] == facet_tree(hit["category"] for hit in found)
    assert faceted["facets"]["Clothing | Women | Scarves"] == 1, "the photo's own product is a match"
    cheap = cli("search", photo, "--facets", "--max-price", "20", "--json").json()["facets"]
    assert cheap == facet_tree(hit["category"] for hit in found if (hit["price_value"] or 1e9) <= 20)
    # Words match only some products: the facets count those, not the catalogue.
    worded = cli("search", "--text", "puzzle", "--mode", "keyword", "--facets", "--json").json()
    assert worded["facets"] == {"Toys & Games": 1, "Toys & Games | Puzzles": 1}

    # More like this: from the product's stored vectors, without it; an unknown id is an error.
    hits_before = server.hits()
    similar = cli("similar", "scarf", "-k", "7", "--json")
    assert similar.code == 0, similar.stderr
    assert "scarf" not in ids(similar) and len(ids(similar)) == 7
    assert server.hits() == hits_before, "no download for more like this"
    unknown = cli("similar", "no-such-product")
    assert unknown.code == 2 and "unknown_product" in unknown.stderr

    # Pages: stable, disjoint, one entry per product.
    first, second = (cli("search", photo, "-k", "3", "--offset", o, "--json") for o in ("0", "3"))
    assert ids(first) + ids(second) == ids(cli("search", photo, "-k", "6", "--json"))
    assert not set(ids(first)) & set(ids(second))

    # Diversity: still k products, one each, its own product first.
    diverse = cli("search", photo, "-k", "5", "--diverse", "--json")
    assert diverse.code == 0 and len(set(ids(diverse))) == 5 and ids(diverse)[0] == "scarf"


def test_a_name_change_updates_the_keyword_vector_in_place(
    cli: Any, env: dict[str, str], shop: dict[str, Any], server: ImageServer, tmp_path: Path
) -> None:
    hits_before = server.hits()
    embedded_before = pipeline.current_context().ledger.stats().get("embedded", 0)
    row = next(r for r in shop["rows"] if r["Uniq Id"] == "mug")
    renamed = {**row, "Product Name": "Ceramic thermos tumbler", "About Product": "Keeps coffee hot."}
    catalog = write_catalog(tmp_path / "renamed.csv", [r if r["Uniq Id"] != "mug" else renamed for r in shop["rows"]])
    done = cli("ingest", str(catalog), "--wait", "--json")
    assert done.code == 0 and done.json()["images_enqueued"] == 0, done.stderr
    for run_id in pipeline.current_context().ledger.run_ids(1):
        wait_for_run(run_id, timeout=60)
    assert ids(cli("search", "--text", "tumbler", "--mode", "keyword", "--json")) == ["mug"]
    assert ids(cli("search", "--text", "travel", "--mode", "keyword", "--json")) == []
    assert (
        server.hits() == hits_before
        and pipeline.current_context().ledger.stats().get("embedded", 0) == embedded_before
    )


# ----------------------------------------------------------------------------------------------- reindex
def make_legacy_index(settings: Any, count: int) -> list[str]:
    """An index as the previous release made it (one unnamed dense vector per point, no keyword vector), with
    its products registered. Returns the product ids."""
    from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, PayloadSchemaType, Point, UpdateOperation

    from lookalike.producer.product import Product, point_id_for
    from lookalike.producer.sync import plan_upserts

    products = [
        Product.build(
            id=f"leg{i}",
            name=f"Legacy lantern {i}" if i == 7 else f"Legacy item {i}",
            image_urls=[f"http://127.0.0.1:9/leg/{i}.jpg"],
            category="Garden | Lighting" if i % 2 else "Garden | Tools",
            price=f"${i}.00",
        )
        for i in range(count)
    ]
    registry = pipeline.current_context().registry
    registry.settle(plan_upserts(registry, [(p, 1) for p in products], "legacy").settle)
    path = settings.qdrant_path / settings.collection
    path.mkdir(parents=True)
    shard = EdgeShard.create(str(path), EdgeConfig(vectors=EdgeVectorParams(size=512, distance=Distance.Cosine)))
    for name in ("product_id", "category", "categories"):
        shard.update(UpdateOperation.create_field_index(name, PayloadSchemaType.Keyword))
    rng = np.random.default_rng(5)
    batch = []
    for product in products:
        vector = rng.standard_normal(512).astype(np.float32)
        url = product.image_urls[0]
        payload = {k: v for k, v in {**product.payload(), "image_url": url}.items() if v is not None}
        batch.append(Point(point_id_for(product.id, url), (vector / np.linalg.norm(vector)).tolist(), payload))
    shard.update(UpdateOperation.upsert_points(batch))
    shard.flush()
    shard.close()
    return [p.id for p in products]


def test_reindex_upgrades_a_previous_release_index_and_resumes_after_an_interruption(
    cli: Any, env: dict[str, str]
) -> None:
    from lookalike.config.settings import get_settings
    from lookalike.worker.store import LEGACY, NAMED

    settings = get_settings()
    make_legacy_index(settings, 1500)
    embedded_before = pipeline.current_context().ledger.stats().get("embedded", 0)
    # The old index still answers image queries (by its stored vectors: "more like this").
    assert cli("similar", "leg3", "-k", "3", "--json").code == 0
    refused = cli("search", "--text", "lantern", "--mode", "keyword")
    assert refused.code == 2 and "lookalike reindex" in refused.stderr

    # Interrupted after its first page: nothing switched, the old index still answers.
    ctx = pipeline.current_context()
    with pytest.raises(RuntimeError, match="interrupted"):
        pipeline.reindex_stage(ctx, interrupt_after=1)
    pipeline.reset_context()
    store = open_test_store()
    try:
        assert store.layout == LEGACY and store.count() == 1500
    finally:
        store.close()

    done = cli("reindex", "--json")
    assert done.code == 0, done.stderr
    report = done.json()
    assert report["upgraded"] and report["points"] == 1500
    store = open_test_store()
    try:
        assert store.layout == NAMED and store.count() == 1500
    finally:
        store.close()
    assert ids(cli("search", "--text", "lantern", "--mode", "keyword", "--json")) == ["leg7"]
    assert set(ids(cli("similar", "leg3", "-k", "5", "--category", "Lighting", "--json"))) <= {
        f"leg{i}" for i in range(1, 1500, 2)
    }
    faceted = cli("search", "--text", "legacy", "--mode", "keyword", "--facets", "--json").json()
    assert faceted["facets"]["Garden"] == 1500, "every keyword match counted, one product each"
    assert pipeline.current_context().ledger.stats().get("embedded", 0) == embedded_before, "nothing embedded"

    again = cli("reindex", "--json")
    assert again.code == 0 and again.json()["upgraded"] is False


# ----------------------------------------------------------------------------------------- words, CLIP side
def test_words_find_the_product_whose_images_lie_in_their_direction(env: dict[str, str]) -> None:
    """Semantic and hybrid modes with the tiny CLIP text model: a product whose image vector is the direction
    the text model gives a word is found first by that word, with no keyword in common (semantic), and the
    keyword side adds a product named by the word (hybrid)."""
    from lookalike.state.search import SearchRequest
    from lookalike.testing.tiny_model import tiny_text_direction
    from lookalike.worker.keywords import document_vector
    from lookalike.worker.store import PointRecord

    ctx = pipeline.current_context()
    store = ctx.ready_store(512)
    rng = np.random.default_rng(3)
    records = []
    for i in range(30):
        vector = rng.standard_normal(512).astype(np.float32)
        payload = {"product_id": f"w{i}", "name": f"Gadget {i}", "categories": ["Misc"], "primary": 1}
        if i == 4:
            vector = tiny_text_direction("kettle")  # looks like a kettle; its name does not say so
        if i == 9:
            payload["name"] = "Copper kettle"  # says kettle; does not look like one
        records.append(
            PointRecord(
                f"00000000-0000-0000-0000-{i:012d}", vector / np.linalg.norm(vector), payload, document_vector(payload)
            )
        )
    store.upsert(records)
    semantic = pipeline.answer_query(ctx, SearchRequest(text="kettle", mode="semantic", k=3))
    assert semantic.results[0].product_id == "w4" and semantic.results[0].matched == ("text",)
    hybrid = pipeline.answer_query(ctx, SearchRequest(text="kettle", k=3))
    assert {hit.product_id for hit in hybrid.results[:2]} == {"w4", "w9"}
    named = next(hit for hit in hybrid.results if hit.product_id == "w9")
    assert "keyword" in named.matched
    keyword = pipeline.answer_query(ctx, SearchRequest(text="kettle", mode="keyword", k=3))
    assert [hit.product_id for hit in keyword.results] == ["w9"]


def test_word_queries_go_through_the_worker_in_every_mode(cli: Any, shop: dict[str, Any]) -> None:
    hybrid = cli("search", "--text", "lighthouse puzzle", "--json")
    assert hybrid.code == 0, hybrid.stderr
    assert "puzzle" in ids(hybrid)[:3]
    semantic = cli("search", "--text", "kettle", "--mode", "semantic", "-k", "4", "--json")
    assert semantic.code == 0 and len(ids(semantic)) == 4
    assert all(hit["matched"] == ["text"] for hit in semantic.json())
    bad = cli("search", "--text", "kettle", "--mode", "fuzzy")
    assert bad.code == 2 and "bad_mode" in bad.stderr


# --------------------------------------------------------------------------------------- the real sample rows
def test_on_the_real_sample_rows_a_distinctive_word_a_category_and_a_price_range(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    """The seed's real rows (names, categories, messy prices), their image URLs served locally: a word found in
    one product's name only finds that product first in keyword and in hybrid mode; a category filter returns
    only that category; a price range only those prices."""
    import re
    from collections import Counter

    from lookalike.producer.catalog import read_catalog
    from lookalike.testing.catalogs import localize_catalog

    from conftest import SAMPLE_CSV

    if not SAMPLE_CSV.is_file():  # pragma: no cover
        pytest.skip(f"{SAMPLE_CSV} is missing")
    local = tmp_path / "sample.csv"
    localize_catalog(SAMPLE_CSV, local, image_server)
    rows = 25  # few enough that every point is a candidate of the hybrid query's dense side (see below)
    report = read_catalog(local, limit=rows)
    start_worker()
    done = cli("ingest", str(local), "--limit", str(rows), "--wait", "--json")
    assert done.code == 0, done.stderr
    points = done.json()["result"]["indexed"]
    # With the tiny text model the dense side ranks at random; a product that is among its candidates always
    # wins the fusion when the keyword side ranks it first. Every point is a candidate when there are <= 100.
    assert points <= 100

    def words(text: str | None) -> set[str]:
        return set(re.findall(r"[a-z]{6,}", (text or "").lower()))

    everywhere = Counter(
        word for p in report.products for word in words(p.name) | words(p.category) | words(p.description)
    )
    target, word = next(
        (p, w) for p in report.products for w in sorted(words(p.name)) if everywhere[w] == 1 and p.image_urls
    )
    for mode in ("keyword", "hybrid"):
        found = cli("search", "--text", word, "--mode", mode, "--json")
        assert found.code == 0, found.stderr
        assert ids(found)[0] == target.id, (mode, word, found.json()[:3])

    category = Counter(level for p in report.products for level in p.categories).most_common(1)[0][0]
    photo = tmp_path / "q.jpg"
    photo.write_bytes(images.product_bytes(1))
    in_category = cli("search", str(photo), "-k", "20", "--category", category, "--json").json()
    assert in_category and all(category in [c.strip() for c in hit["category"].split("|")] for hit in in_category)
    priced = cli("search", str(photo), "-k", "20", "--min-price", "10", "--max-price", "30", "--json").json()
    assert priced and all(10 <= hit["price_value"] <= 30 for hit in priced)
    expected = {
        p.id for p in report.products if p.price_value is not None and 10 <= p.price_value <= 30 and p.image_urls
    }
    assert {hit["product_id"] for hit in priced} <= expected
