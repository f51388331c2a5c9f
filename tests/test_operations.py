"""Operating it: `status`, Flower, the Prometheus exporter and the per-job log lines, against real processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route

from conftest import LOOKALIKE, wait_for_run

RUN_KEYS = {
    "run_id", "kind", "source", "status", "created", "enqueued", "indexed", "failed", "superseded", "skipped_rows",
    "failed_by_reason", "cache_hits", "embed_calls", "progress", "images_per_second", "eta_seconds", "stage_seconds",
}  # fmt: skip
STATUS_KEYS = {
    "conditions", "runs", "queues", "workers", "events", "failures_recorded", "products_registered", "model",
    "collection_model",
}  # fmt: skip
OWNERSHIP_KEYS = {"collection", "configured", "recorded", "mismatch", "refused"}
QUEUES = {"lookalike.fetch", "lookalike.embed", "lookalike.index", "lookalike.query", "lookalike.encode"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_catalog(server: ImageServer, directory: Path) -> tuple[Path, int, dict[str, int]]:
    rows = []
    good = 0
    for i in range(12):
        urls = [server.add(f"/ops/{i}-{j}.jpg", Route(body=images.product_bytes(i * 3 + j))) for j in range(2)]
        good += 2
        rows.append(catalog_row(f"ops-{i}", f"Ops {i}", urls))
    rows.append(catalog_row("gone", "Gone", [server.add("/ops/404.jpg", Route(status=404))]))
    rows.append(
        catalog_row("text", "Text", [server.add("/ops/text.jpg", Route(body=b"hello", content_type="text/plain"))])
    )
    rows.append(catalog_row("empty", "No image", []))
    return write_catalog(directory / "ops.csv", rows), good, {"http_404": 1, "not_an_image": 1}


def get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def test_status_counts_match_what_the_workers_did(cli, env, image_server, tmp_path, start_worker):
    catalog, good, bad = small_catalog(image_server, tmp_path)
    worker = start_worker()
    ingested = cli("ingest", str(catalog), "--json")
    assert ingested.code == 0, ingested.stderr
    run_id = ingested.json()["run_id"]
    wait_for_run(run_id)

    status = cli("status", run_id, "--json")
    assert status.code == 0, status.stderr
    data = status.json()
    assert set(data) == STATUS_KEYS
    [run] = data["runs"]
    assert set(run) == RUN_KEYS
    assert set(run["stage_seconds"]) == {"download", "decode", "embed", "upsert", "duplicates", "queue_wait"}
    assert run["status"] == "done" and run["progress"] == 1.0 and run["eta_seconds"] is None
    assert run["enqueued"] == good + sum(bad.values())
    assert run["indexed"] == good
    assert run["failed"] == sum(bad.values())
    assert run["failed_by_reason"] == bad
    assert run["skipped_rows"] == 1
    assert run["embed_calls"] >= 1 and run["stage_seconds"]["download"] > 0
    assert set(data["queues"]) == QUEUES
    assert all(q == {"depth": 0, "oldest_age_seconds": None} for q in data["queues"].values())
    assert {q for queues in data["workers"].values() for q in queues} == QUEUES
    assert data["failures_recorded"] == 2
    assert data["products_registered"] == 14
    ownership = data["collection_model"]
    assert set(ownership) == OWNERSHIP_KEYS
    assert ownership["recorded"]["vision"] == ownership["configured"]["vision"]
    assert ownership["mismatch"] == [] and ownership["refused"] is None

    human = cli("status", run_id)
    assert human.code == 0 and run_id in human.stdout and "lookalike.fetch" in human.stdout

    # One structured line per job outcome, with run, product, URL, stage and (for failures) the reason.
    assert worker.stop() == 0
    lines = [line for line in worker.output().splitlines() if "outcome=" in line]
    outcomes = Counter(re.search(r"outcome=(\w+)", line).group(1) for line in lines)  # type: ignore[union-attr]
    assert outcomes == {"indexed": good, "failed": 2}
    failed = next(line for line in lines if "outcome=failed" in line and "404" in line)
    for field in (f"run_id={run_id}", "product_id=gone", "url=http://127.0.0.1", "stage=fetch", "reason=http_404"):
        assert field in failed
    indexed = next(line for line in lines if "outcome=indexed" in line)
    assert "seconds=" in indexed and "stage=index" in indexed


def test_status_for_an_unknown_run_fails_clearly(cli, env, redis_client):
    result = cli("status", "no-such-run", "--json")
    assert result.code == 2 and "no run 'no-such-run'" in result.stderr


def test_json_log_format(env, image_server, tmp_path, start_worker, cli):
    catalog, good, _bad = small_catalog(image_server, tmp_path)
    worker = start_worker(extra={"LOOKALIKE_LOG_FORMAT": "json"})
    run_id = cli("ingest", str(catalog), "--json").json()["run_id"]
    wait_for_run(run_id)
    worker.stop()
    records = [json.loads(line[line.index("{") :]) for line in worker.output().splitlines() if '"outcome"' in line]
    assert len(records) == good + 2
    assert {r["outcome"] for r in records} == {"indexed", "failed"}
    assert all(r["run_id"] == run_id and r["url"].startswith("http://127.0.0.1") for r in records)


@pytest.fixture
def flower(env: dict[str, str]) -> Any:
    started: list[subprocess.Popen[bytes]] = []

    def start(extra: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [LOOKALIKE, "flower", *args],
            env={**os.environ, **env, **extra},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(15)


def test_flower_answers_with_auth_refuses_without_and_shows_the_ingest_tasks(flower, cli, env, image_server, tmp_path):
    port = free_port()
    process = flower({"LOOKALIKE_FLOWER_BASIC_AUTH": "ops:s3cret-pass"}, "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthcheck", process)
    assert get(f"{base}/")[0] == 401
    assert get(f"{base}/api/tasks", "ops:wrong")[0] == 401
    assert get(f"{base}/", "ops:s3cret-pass")[0] == 200
    with open(f"/proc/{process.pid}/cmdline", "rb") as handle:
        assert b"s3cret-pass" not in handle.read(), "the password is visible in the process list"

    catalog, good, _bad = small_catalog(image_server, tmp_path)
    assert cli("ingest", str(catalog), "--wait", "--json").code == 0
    deadline = time.monotonic() + 20
    while True:
        status, body = get(f"{base}/api/tasks?limit=1000", "ops:s3cret-pass")
        tasks = json.loads(body) if status == 200 else {}
        names = Counter(task["name"] for task in tasks.values())
        fetch_args = [task["args"] for task in tasks.values() if task["name"] == "lookalike.fetch_batch"]
        # Jobs travel in batches ("[N jobs: product url, ...]"); each is fetched once (none of these is retried).
        fetched = sum(int(re.match(r"\[(\d+) jobs: ", args).group(1)) for args in fetch_args)  # type: ignore[union-attr]
        if fetched >= good + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert fetched == good + 2 and names["lookalike.fetch"] == 0
    assert names["lookalike.embed"] >= 1 and names["lookalike.index"] >= 1
    assert any("ops-3 http://127.0.0.1" in args for args in fetch_args), "product id and URL readable in Flower"
    embed_args = [task["args"] for task in tasks.values() if task["name"] == "lookalike.embed"]
    assert all(len(args) < 500 and "images:" in args for args in embed_args), "image bytes must not show"


def test_flower_refuses_to_listen_openly_without_a_login(cli, env):
    result = cli("flower", "--address", "0.0.0.0", "--port", str(free_port()))
    assert result.code == 2
    assert "refusing to serve Flower on 0.0.0.0 without a login" in result.stderr


def test_metrics_endpoint_exposes_the_documented_names(cli, env, image_server, tmp_path):
    from lookalike.worker import metrics

    catalog, good, _bad = small_catalog(image_server, tmp_path)
    assert cli("ingest", str(catalog), "--wait", "--json").code == 0
    port = free_port()
    process = subprocess.Popen(
        [LOOKALIKE, "metrics", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", process)
        status, body = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        process.terminate()
        process.wait(10)
    assert status == 200
    text = body.decode()
    documented = set(re.findall(r"^(lookalike_\w+)", metrics.__doc__ or "", re.MULTILINE))
    assert len(documented) == 15
    exposed = {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"^(lookalike_\w+)", text, re.M)}
    assert documented == exposed
    values = dict(re.findall(r"^(lookalike_\S+) (\S+)$", text, re.MULTILINE))
    assert float(values["lookalike_images_indexed_total"]) == good
    assert float(values['lookalike_images_failed_total{reason="http_404"}']) == 1
    assert float(values['lookalike_queue_depth{queue="lookalike.fetch"}']) == 0
    assert float(values['lookalike_stage_seconds_count{stage="download"}']) == good


def test_a_second_worker_leaves_the_embedded_store_to_the_first(env, start_worker):
    first = start_worker()
    second = start_worker(ready_queues=0)
    deadline = time.monotonic() + 30
    while "owned by another worker" not in second.output():
        assert time.monotonic() < deadline, second.output()
        assert second.process.poll() is None, second.output()
        time.sleep(0.2)
    assert "runs fetch and embed only" in second.output()
    while "started fetch pool" not in second.output():
        assert time.monotonic() < deadline, second.output()
        time.sleep(0.2)
    assert "store pool" not in second.output()
    assert second.stop() == 0 and first.stop() == 0
