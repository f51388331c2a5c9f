"""The whole pipeline through the installed command: CSV -> Redis -> real Celery workers -> Qdrant -> query."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lookalike.producer.product import point_id_for
from lookalike.testing import images
from lookalike.testing.catalogs import PLACEHOLDER_PATH, catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route

from conftest import Snapshot, ingested_world, open_test_store, restore_snapshot, run_cli

PLACEHOLDER = "https://images-na.ssl-images-amazon.com" + PLACEHOLDER_PATH
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


def build_catalog(
    server: ImageServer, directory: Path, faults: bool = True
) -> tuple[Path, dict[str, list[str]], dict[str, str]]:
    """50 products: 42 with only good images (1-3 each, four formats), 8 whose images go wrong in every way
    (without ``faults``, just the 42).

    Returns the CSV, product id -> good image URLs, and bad URL -> expected failure reason.
    """
    good: dict[str, list[str]] = {}
    bad: dict[str, str] = {}
    rows = []
    for i in range(42):
        urls = []
        for j in range(1 + i % 3):
            fmt = images.FORMATS[(i + j) % 4]
            path = f"/images/I/p{i:02d}-{j}.{fmt.lower()}"
            urls.append(server.add(path, Route(body=images.product_bytes(i * 10 + j, fmt), content_type=MIME[fmt])))
        good[f"p{i:02d}"] = urls
        rows.append(catalog_row(f"p{i:02d}", f"Product {i}", [*urls, PLACEHOLDER], price=f"${10 + i}.99"))

    def add_bad(product: str, path: str, route: Route, reason: str | None) -> str:
        url = server.add(path, route)
        if reason is None:
            good.setdefault(product, []).append(url)
        else:
            bad[url] = reason
        return url

    cases = [
        ("b-404", "/images/I/missing.jpg", Route(status=404), "http_404"),
        ("b-flaky", "/images/I/flaky.jpg", Route(body=images.product_bytes(900), fail_first=1), None),
        (
            "b-429",
            "/images/I/throttled.png",
            Route(body=images.product_bytes(901, "PNG"), fail_first=1, fail_status=429),
            None,
        ),
        ("b-slow", "/images/I/slow.jpg", Route(body=images.product_bytes(902), trickle_seconds=4), "deadline_exceeded"),
        (
            "b-html",
            "/images/I/page.jpg",
            Route(body=b"<html><body>Robot check</body></html>", content_type="text/html"),
            "not_an_image",
        ),
        ("b-huge", "/images/I/huge.jpg", Route(body=b"\xff" * (3 * 1024 * 1024)), "too_large"),
        (
            "b-cut",
            "/images/I/cut.jpg",
            Route(body=images.truncated(images.product_bytes(903, size=(800, 600)), 0.4)),
            "truncated",
        ),
        ("b-bomb", "/images/I/bomb.png", Route(body=images.png_bomb(), content_type="image/png"), "too_many_pixels"),
    ]
    for product, path, route, reason in cases if faults else []:
        url = add_bad(product, path, route, reason)
        rows.append(catalog_row(product, f"Case {product}", [url, PLACEHOLDER]))
    csv_path = write_catalog(directory / "catalog.csv", rows)
    return csv_path, good, bad


def test_ingest_indexes_every_good_image_once_and_counts_every_bad_one(cli, env, image_server, tmp_path):
    catalog, good, bad = build_catalog(image_server, tmp_path)
    expected_points = {point_id_for(pid, url): (pid, url) for pid, urls in good.items() for url in urls}

    first = cli("ingest", str(catalog), "--wait", "--json")
    assert first.code == 0, first.stderr
    summary = first.json()
    assert summary["rows_read"] == 50
    assert summary["products"] == {"total": 50, "new": 50}
    assert summary["images_enqueued"] == len(expected_points) + len(bad)
    assert summary["image_entries"]["placeholders"] == 50
    result = summary["result"]
    assert result["indexed"] == len(expected_points)
    assert result["failed"] == len(bad)
    assert result["failed_by_reason"] == dict(Counter(bad.values()))
    assert not any(reason.startswith("internal") for reason in result["failed_by_reason"]), "a worker crashed"
    # Batches, not one model call per image.
    assert result["embed_calls"] < len(expected_points)

    store = open_test_store()
    try:
        points = {pid: payload for pid, payload, _ in store.scroll()}
        assert set(points) == set(expected_points)
        for point_id, (product_id, url) in expected_points.items():
            payload = points[point_id]
            assert payload["product_id"] == product_id
            assert payload["image_url"] == url
            assert payload["product_url"] == f"https://www.example.com/dp/{product_id}"
            assert payload["category"] == "Toys & Games | Building Toys"
            assert payload["categories"] == ["Toys & Games", "Building Toys"]
        assert points[point_id_for("p07", good["p07"][0])]["price"] == "$17.99"
        assert points[point_id_for("p07", good["p07"][0])]["name"] == "Product 7"
    finally:
        store.close()

    failures = cli("failures", "--json")
    assert failures.code == 0, failures.stderr
    recorded = {item["image_url"]: item for item in failures.json()}
    assert {url: item["reason"] for url, item in recorded.items()} == bad
    assert recorded[next(u for u, r in bad.items() if r == "http_404")]["stage"] == "fetch"
    assert recorded[next(u for u, r in bad.items() if r == "truncated")]["stage"] == "decode"
    for item in recorded.values():
        assert set(item) >= {"product_id", "image_url", "stage", "reason", "time"}

    # The flaky URLs were fetched again after their first failure; the 404 was not retried.
    assert image_server.hits("/images/I/flaky.jpg") == 2
    assert image_server.hits("/images/I/throttled.png") == 2
    assert image_server.hits("/images/I/missing.jpg") == 1

    hits_before = image_server.hits()
    second = cli("ingest", str(catalog), "--wait", "--json")
    assert second.code == 0, second.stderr
    again = second.json()
    assert again["images_enqueued"] == 0
    assert again["products"] == {"total": 50, "unchanged": 50}
    assert image_server.hits() == hits_before, "an unchanged catalogue downloaded something"
    store = open_test_store()
    try:
        assert store.count() == len(expected_points)
    finally:
        store.close()


@pytest.fixture(scope="module")
def good_catalogue_indexed(
    shared_server: ImageServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Snapshot, dict[str, list[str]]]:
    """The 42 products with only good images, ingested once by the local workers `ingest --wait` starts."""
    directory = tmp_path_factory.mktemp("good-catalogue")
    catalog, good, _bad = build_catalog(shared_server, directory, faults=False)

    def ingest(environment: dict[str, str]) -> None:
        done = run_cli(["ingest", str(catalog), "--wait", "--json"], environment)
        assert done.code == 0, done.stderr

    return ingested_world(directory, ingest), good


@pytest.fixture
def good_catalogue(
    env: dict[str, str], redis_client: Any, good_catalogue_indexed: tuple[Snapshot, dict[str, list[str]]]
) -> dict[str, list[str]]:
    """This test's own copy of the 42 good products' index and state (no worker running); product id -> URLs."""
    snapshot, good = good_catalogue_indexed
    restore_snapshot(snapshot, redis_client, Path(env["LOOKALIKE_QDRANT_PATH"]))
    return good


def test_query_with_a_resized_reencoded_copy_ranks_its_product_first(cli, env, good_catalogue, tmp_path):
    good = good_catalogue
    for product in ("p03", "p18", "p40"):
        original = images.product_bytes(int(product[1:]) * 10, images.FORMATS[int(product[1:]) % 4])
        query = tmp_path / f"{product}.jpg"
        query.write_bytes(images.resized_copy(original, scale=0.55, fmt="JPEG", quality=70))
        found = cli("search", str(query), "-k", "5", "--json")
        assert found.code == 0, found.stderr
        ranked = found.json()
        assert ranked[0]["product_id"] == product
        assert ranked[0]["image_url"] == good[product][0]
        assert len({r["product_id"] for r in ranked}) == len(ranked) == 5, "one entry per product"
        assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
        assert set(ranked[0]) == {
            "product_id", "name", "match", "score", "image_url", "product_url", "category", "price", "price_value",
            "matched",
        }
        assert ranked[0]["matched"] == ["image"]


def test_query_over_the_broker_with_a_running_worker(cli, env, image_server, tmp_path, start_worker):
    catalog, good, _bad = build_catalog(image_server, tmp_path, faults=False)
    worker = start_worker()
    ingested = cli("ingest", str(catalog), "--wait", "--json")
    assert ingested.code == 0, ingested.stderr
    assert "started local workers" not in ingested.stderr

    query = tmp_path / "query.png"
    query.write_bytes(images.resized_copy(images.product_bytes(250, images.FORMATS[25 % 4]), 0.7, "PNG"))
    found = cli("search", str(query), "--json", "-k", "3")
    assert found.code == 0, found.stderr
    assert "answering in this process" not in found.stderr
    assert found.json()[0]["product_id"] == "p25"

    # A URL query is fetched by the worker, through the same guarded downloader.
    by_url = cli("search", good["p11"][0], "--json", "-k", "1")
    assert by_url.code == 0, by_url.stderr
    assert by_url.json()[0]["product_id"] == "p11"

    # The category filter matches any level of the category path.
    filtered = cli("search", str(query), "--json", "--category", "Nothing Like This")
    assert filtered.code == 0 and filtered.json() == []
    assert worker.process.poll() is None


def test_query_task_accepts_base64_and_refuses_garbage(env, good_catalogue, start_worker):
    from lookalike.app.gateway import Gateway
    from lookalike.config.settings import get_settings
    from lookalike.state.search import QueryRejected, SearchRequest
    from lookalike.worker.app import app

    start_worker()  # on the 42 good products, indexed
    gateway = Gateway(get_settings())
    data = images.resized_copy(images.product_bytes(50, images.FORMATS[5 % 4]), 0.8)
    answer = gateway.search(SearchRequest(image=data, k=2), timeout=20)
    assert answer["results"][0]["product_id"] == "p05"
    # Garbage is refused where the query arrives, before anything is sent.
    with pytest.raises(QueryRejected) as refused:
        gateway.search(SearchRequest(image=b"not an image", k=2), timeout=20)
    assert refused.value.reason == "not_an_image" and refused.value.detail
    # The encode processes trust no bytes from the broker: a "prepared" image that is not the transport JPEG
    # (a full-size photo) is refused from its header.
    forged = SearchRequest(image=images.product_bytes(50, "PNG"), prepared=True, k=2).to_message()
    assert app.send_task("lookalike.encode", args=[forged], ignore_result=False).get(timeout=20)["error"] == (
        "bad_transport"
    )
    # The query task reads no file path a caller names: an unknown field is refused as data.
    path_source = app.send_task("lookalike.search", args=[{"path": "/etc/passwd", "k": 2}], queue="lookalike.query")
    assert path_source.get(timeout=20) == {"error": "bad_query", "detail": "unknown field 'path'"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "Uniq Id,Product Name,Category,Selling Price,About Product,Product Url\nx,y,z,1,d,u\n",
            "missing required column(s): Image",
        ),
        ("", "the file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "not a CSV file"),
    ],
    ids=["missing-column", "empty", "binary"],
)
def test_bad_catalogue_is_one_line_error_and_enqueues_nothing(cli, env, redis_client, tmp_path, content, message):
    path = tmp_path / "catalog.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    result = cli("ingest", str(path), "--wait")
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert result.stdout == ""
    assert redis_client.dbsize() == 0, "something was written or enqueued"


def test_missing_catalogue_file(cli, env, tmp_path):
    result = cli("ingest", str(tmp_path / "nope.csv"))
    assert result.code == 2
    assert "no such file" in result.stderr


def test_a_worker_embeds_64_queued_images_in_batches(cli, env, image_server, tmp_path):
    """Not a benchmark: the model is called once per batch, not once per image."""
    rows = []
    for i in range(16):
        urls = [
            image_server.add(f"/batch/{i}-{j}.png", Route(body=images.product_bytes(i * 4 + j, "PNG")))
            for j in range(4)
        ]
        rows.append(catalog_row(f"batch-{i}", f"Batch {i}", urls))
    catalog = write_catalog(tmp_path / "batch.csv", rows)
    settings = {"LOOKALIKE_BATCH_SIZE": "32", "LOOKALIKE_BATCH_LINGER": "0.5"}
    result = cli("ingest", str(catalog), "--wait", "--json", extra=settings)
    assert result.code == 0, result.stderr
    done = result.json()["result"]
    assert done["indexed"] == 64
    assert 2 <= done["embed_calls"] <= 8, done  # 64 images in batches of up to 32, not 64 calls
    status = cli("status", result.json()["run_id"], "--json").json()["runs"][0]
    assert status["embed_calls"] == done["embed_calls"]


def test_real_sample_catalogue_localized_to_the_test_server(cli, env, image_server, tmp_path):
    """The seed's real rows (messy prices, quoting, long fields, placeholders) end to end; their image URLs are
    rewritten to the local server, which serves generated images under the same paths: nothing leaves this
    machine."""
    from lookalike.testing.catalogs import localize_catalog

    from conftest import SAMPLE_CSV

    if not SAMPLE_CSV.is_file():  # pragma: no cover - ../shared/data sits beside the checkout
        pytest.skip(f"{SAMPLE_CSV} is missing")
    local = tmp_path / "sample.csv"
    mapping = localize_catalog(SAMPLE_CSV, local, image_server)
    assert all(url.startswith(image_server.base_url) for url in mapping.values())

    result = cli("ingest", str(local), "--limit", "120", "--wait", "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    entries = summary["image_entries"]
    assert summary["rows_read"] == 1000 and summary["rows_selected"] == 120
    assert entries["entries"] == sum(
        entries[k] for k in ("kept", "placeholders", "duplicates", "invalid", "empty", "in_skipped_rows")
    )
    assert summary["images_enqueued"] == entries["kept"]
    assert summary["result"]["indexed"] == entries["kept"] and summary["result"]["failed"] == 0
    assert image_server.hits("/images/G/01/x-locale/common/transparent-pixel.jpg") == 0, "a placeholder was fetched"

    store = open_test_store()
    try:
        payloads = [payload for _id, payload, _v in store.scroll()]
    finally:
        store.close()
    assert len(payloads) == entries["kept"]
    longboard = [p for p in payloads if p["product_id"] == "4c69b61db1fc16e7013b43fc926e502d"]
    assert len(longboard) == 4 and longboard[0]["price"] == "$237.68"
    assert longboard[0]["categories"][0] == "Sports & Outdoors"


def test_without_a_model_the_commands_say_so_instead_of_hanging(cli, env, image_server, tmp_path):
    empty = tmp_path / "no-model"
    empty.mkdir()
    url = image_server.add("/m.jpg", Route(body=images.product_bytes(1)))
    catalog = write_catalog(tmp_path / "m.csv", [catalog_row("m", "M", [url])])
    ingest = cli("ingest", str(catalog), "--wait", extra={"LOOKALIKE_MODEL_DIR": str(empty)}, timeout=60)
    assert ingest.code == 3
    assert "has no model.onnx" in ingest.stderr
    worker = cli("worker", extra={"LOOKALIKE_MODEL_DIR": str(empty)}, timeout=60)
    assert worker.code == 3 and "has no model.onnx" in worker.stderr  # a missing thing: 3 in every command


def test_embedded_defaults_ingest_and_search_with_nothing_else_running(env, image_server, tmp_path):
    """The README's first command: no broker configured and none at the default address -> an embedded Valkey
    and local workers for `ingest`, an in-process answer for `search`; the registry survives between runs."""
    import subprocess

    from conftest import LOOKALIKE, Result

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # This machine does run a Redis at the default address: point "the default" at a port nobody listens on.
    (hooks / "sitecustomize.py").write_text(
        "import lookalike.app.broker as embedded\nembedded.DEFAULT_BROKER_URL = 'redis://127.0.0.1:1/0'\n"
    )
    environment = {k: v for k, v in env.items() if k != "LOOKALIKE_BROKER_URL"}
    environment.update(
        LOOKALIKE_EMBEDDED_BROKER="auto",
        LOOKALIKE_EMBEDDED_BROKER_DIR=str(tmp_path / "broker"),
        PYTHONPATH=str(hooks),
    )
    os_env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_BROKER_URL"}
    catalog, good, _bad = build_catalog(image_server, tmp_path, faults=False)

    def run(*args: str) -> Any:
        done = subprocess.run(
            [LOOKALIKE, *args], env={**os_env, **environment}, capture_output=True, text=True, timeout=180, cwd=tmp_path
        )
        return Result(done.returncode, done.stdout, done.stderr)

    first = run("ingest", str(catalog), "--json")
    assert first.code == 0, first.stderr
    assert "started an embedded Valkey broker" in first.stderr
    assert "started local workers" in first.stderr
    assert first.json()["result"]["indexed"] == sum(len(urls) for urls in good.values())

    query = tmp_path / "q.jpg"
    query.write_bytes(images.resized_copy(images.product_bytes(330, images.FORMATS[33 % 4]), 0.5))
    found = run("search", str(query), "--json", "-k", "2")
    assert found.code == 0, found.stderr
    assert "answering in this process" in found.stderr
    assert found.json()[0]["product_id"] == "p33"

    again = run("ingest", str(catalog), "--json")
    assert again.code == 0, again.stderr
    assert again.json()["images_enqueued"] == 0, "the embedded broker lost the registry between runs"
