"""A collection belongs to one model: a worker with another model writes nothing into it, says why, and loses no
job; queries embed with the collection's model; an index from before the records is adopted once; the embedding
cache is keyed by the model's files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike.config.settings import get_settings
from lookalike.state.search import QueryRejected, SearchRequest
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.testing.tiny_model import build_tiny_model
from lookalike.worker import pipeline
from lookalike.worker.cache import EmbeddingCache
from lookalike.worker.fingerprint import VISION_FILES, model_id
from lookalike.worker.ownership import configured_models, write_record
from lookalike.worker.store import live_collection

from conftest import (
    Snapshot,
    WorkerProcess,
    ingested_world,
    open_test_store,
    restore_snapshot,
    run_cli,
    wait_for_run,
)

PRODUCTS = 6


def small_catalog(server: ImageServer, directory: Path) -> tuple[Path, dict[str, str]]:
    """Six products with one distinct image each; returns the CSV and product id -> image URL."""
    urls = {}
    rows = []
    for i in range(PRODUCTS):
        url = server.add(f"/own/p{i}.jpg", Route(body=images.product_bytes(500 + i)))
        urls[f"p{i}"] = url
        rows.append(catalog_row(f"p{i}", f"Product {i}", [url]))
    return write_catalog(directory / "catalog.csv", rows), urls


def fingerprint_of(directory: Path | str) -> str:
    return model_id("m", Path(directory), VISION_FILES).fingerprint


@pytest.fixture(scope="module")
def small_catalogue_indexed(shared_server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """The small catalogue ingested once, through a worker with the configured model, which then stops."""
    directory = tmp_path_factory.mktemp("own-indexed")

    def ingest(environment: dict[str, str]) -> None:
        catalog, _urls = small_catalog(shared_server, directory)
        worker = WorkerProcess(environment)
        try:
            worker.wait_ready(5)
            done = run_cli(["ingest", str(catalog), "--wait"], environment)
            assert done.code == 0, done.stderr
        finally:
            assert worker.stop() == 0, worker.output()
            Path(worker.log.name).unlink(missing_ok=True)

    return ingested_world(directory, ingest)


@pytest.fixture
def indexed(env: dict[str, str], redis_client, small_catalogue_indexed: Snapshot) -> None:
    """This test's own copy of the small catalogue's index and of its state in Redis (workers stopped)."""
    restore_snapshot(small_catalogue_indexed, redis_client, Path(env["LOOKALIKE_QDRANT_PATH"]))


@pytest.fixture
def other_model(tmp_path: Path) -> Path:
    """A tiny model of the same shape with other weights: same dimension, another vector space."""
    return build_tiny_model(tmp_path / "other-model", seed=99)


def test_a_worker_with_another_model_writes_nothing_and_says_why_in_status_failures_and_log(
    cli, env, server, tmp_path, start_worker, other_model
):
    catalog, urls = small_catalog(server, tmp_path)
    mine, theirs = fingerprint_of(env["LOOKALIKE_MODEL_DIR"]), fingerprint_of(other_model)
    assert mine != theirs
    owner = start_worker("--queues", "index,query", ready_queues=2)
    stranger = start_worker(
        "--queues", "fetch,embed,encode", ready_queues=5, extra={"LOOKALIKE_MODEL_DIR": str(other_model)}
    )

    ingest = cli("ingest", str(catalog), "--wait", "--json")
    assert ingest.code == 1, ingest.stderr  # nothing indexed
    result = ingest.json()["result"]
    assert result["indexed"] == 0
    assert result["failed_by_reason"] == {"model_mismatch": PRODUCTS}

    # The reason, naming both fingerprints, in the dead-letter list (with the jobs kept for a retry) ...
    failures = cli("failures", "--json").json()
    assert {item["reason"] for item in failures} == {"model_mismatch"}
    assert {item["image_url"] for item in failures} == set(urls.values())
    assert all(mine in item["detail"] and theirs in item["detail"] for item in failures)
    # ... in `status` ...
    status = cli("status", "--json")
    assert status.code == 0, status.stderr
    ownership = status.json()["collection_model"]
    assert ownership["recorded"]["vision"]["fingerprint"] == mine
    assert ownership["refused"]["jobs"] == PRODUCTS
    assert ownership["refused"]["worker_model"] == theirs
    assert mine in ownership["refused"]["collection_model"]
    shown = cli("status").stdout
    assert "MODEL MISMATCH" in shown and mine in shown and theirs in shown
    # ... and in the store owner's log, once per batch rather than once per image.
    owner_log = owner.output()
    assert "refused a batch" in owner_log and mine in owner_log and theirs in owner_log

    # Nothing was written.
    owner.stop()
    stranger.stop()
    store = open_test_store()
    try:
        assert store.count() == 0
    finally:
        store.close()

    # The jobs were not lost: with the worker's model put right, a retry indexes every one of them.
    start_worker()
    retried = cli("failures", "--retry", "--reason", "model_mismatch", "--json")
    assert retried.code == 0, retried.stderr
    assert retried.json()["requeued"] == PRODUCTS
    run = wait_for_run(retried.json()["run_id"])
    assert int(run.get("indexed", 0)) == PRODUCTS
    after = cli("status", "--json").json()["collection_model"]
    assert after["refused"] is None and after["mismatch"] == []


def test_queries_embed_with_the_live_collections_model_not_the_workers_own(
    cli, env, indexed, tmp_path, start_worker, other_model
):
    # The catalogue was indexed by workers with the configured model. Start them with another model configured:
    # the collection still belongs to the first one, whose directory this machine still holds, so the query
    # encoder loads that one.
    cli_env = {"LOOKALIKE_MODEL_DIR": str(other_model)}
    worker = start_worker(extra=cli_env)
    query = tmp_path / "query.jpg"
    query.write_bytes(images.product_bytes(503))
    found = cli("search", str(query), "-k", "1", "--json", extra=cli_env)
    assert found.code == 0, found.stderr
    assert found.json()[0]["product_id"] == "p3"
    worker.stop()


def test_a_query_vector_from_another_model_is_refused_by_the_store_side(env, indexed):
    ctx = pipeline.current_context()
    request = ctx.query_preparer.prepare(SearchRequest(image=images.product_bytes(502), k=1))
    vector, model = pipeline.encode_query(ctx, request)
    assert model == fingerprint_of(env["LOOKALIKE_MODEL_DIR"])
    assert pipeline.search_encoded(ctx, SearchRequest(image=b"x", k=1).encoded_form(), vector, model).results
    with pytest.raises(QueryRejected) as refused:
        pipeline.search_encoded(ctx, SearchRequest(image=b"x", k=1).encoded_form(), vector, "0123456789abcdef")
    assert refused.value.reason == "model_mismatch"
    assert "0123456789abcdef" in str(refused.value) and model in str(refused.value)


def test_a_collection_whose_model_is_not_on_this_machine_refuses_queries_instead_of_mixing_spaces(
    env, tmp_path, other_model
):
    settings = get_settings()
    gone = tmp_path / "gone-model"
    shutil.copytree(other_model, gone)
    record = configured_models(settings)
    foreign = model_id("elsewhere", gone, VISION_FILES)
    write_record(settings, live_collection(settings), record.__class__(foreign, record.text))
    shutil.rmtree(gone)
    ctx = pipeline.current_context()
    with pytest.raises(QueryRejected) as refused:
        pipeline.encode_query(ctx, SearchRequest(image=images.product_bytes(1), k=1))
    assert refused.value.reason == "model_mismatch"
    assert foreign.fingerprint in str(refused.value)


def test_an_index_from_before_the_records_is_adopted_with_the_configured_model_and_says_so_once(
    cli, env, indexed, caplog
):
    settings = get_settings()
    collection = live_collection(settings)
    record_file = settings.qdrant_path / f"{collection}.model.json"
    assert json.loads(record_file.read_text())["adopted"] is False  # a new collection: recorded, not adopted
    record_file.unlink()  # as an index made before collections recorded their model

    with caplog.at_level(logging.WARNING, logger="lookalike.worker.ownership"):
        ctx = pipeline.current_context()
        first = ctx.owning_model()
        ctx.owning_model()
        pipeline.reset_context()
        again = pipeline.current_context().owning_model()
    adopted = [r for r in caplog.records if "adopted" in r.getMessage()]
    assert len(adopted) == 1, caplog.text
    assert f"({PRODUCTS} points)" in adopted[0].getMessage()
    assert first.adopted and again == first
    assert first.vision.fingerprint == fingerprint_of(env["LOOKALIKE_MODEL_DIR"])
    pipeline.reset_context()
    shown = cli("status")
    assert "adopted" in shown.stdout and first.vision.fingerprint in shown.stdout


def test_the_embedding_cache_is_keyed_by_the_models_files_not_its_directory(env, redis_client, tmp_path, other_model):
    settings = get_settings()
    copy = tmp_path / "same-model-elsewhere"
    shutil.copytree(settings.model_dir, copy)
    vector = np.arange(4, dtype=np.float32)
    prefix = settings.key_prefix

    def cache_for(directory: Path) -> EmbeddingCache:
        return EmbeddingCache(redis_client, prefix, fingerprint_of(directory), ttl=60)

    cache_for(settings.model_dir).put_many({"ab" * 32: vector})
    assert np.array_equal(cache_for(copy).get("ab" * 32), vector)  # same files: same vectors
    assert cache_for(other_model).get("ab" * 32) is None  # other weights: never handed out
    # The worker's own cache uses the configured model's fingerprint.
    assert pipeline.current_context().cache.get("ab" * 32) is not None


def test_a_models_fingerprint_is_read_from_its_files_once_per_version_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.testing.tiny_model import build_tiny_text_model
    from lookalike.worker import fingerprint
    from lookalike.worker.fingerprint import TEXT_FILES

    directory = build_tiny_text_model(tmp_path / "text")
    first = model_id("text", directory, TEXT_FILES).fingerprint
    parsed: list[str] = []
    real_loads = json.loads
    monkeypatch.setattr(fingerprint.json, "loads", lambda text: parsed.append(text) or real_loads(text))
    # Every word query asks for it: a real tokenizer.json is megabytes of JSON, read only when it changes.
    for _ in range(3):
        assert model_id("text", directory, TEXT_FILES).fingerprint == first
    assert parsed == []
    tokenizer = directory / "tokenizer.json"
    vocabulary = real_loads(tokenizer.read_text())
    vocabulary["added_tokens"] = [*vocabulary.get("added_tokens", []), {
        "id": 999_999, "content": "<extra>", "single_word": False, "lstrip": False, "rstrip": False,
        "normalized": False, "special": True,
    }]
    tokenizer.write_text(json.dumps(vocabulary))
    changed = model_id("text", directory, TEXT_FILES).fingerprint
    assert changed != first and parsed  # another tokenizer: read again, another fingerprint
