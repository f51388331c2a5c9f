"""Shoppers first: the query path has its own processes and priority, sends one chain that expires with the
sender's patience, never carries a full-size photo through Redis, and the store owner defers an optimize while
shoppers query. Through the installed command and real Celery workers."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from lookalike.state.search import SearchRequest
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route


# ------------------------------------------------------------------------------------------------ processes
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _queues_of(pid: int) -> str | None:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"--queues") + 1].decode() if b"--queues" in argv else None


def test_the_default_worker_runs_shoppers_on_their_own_processes_ahead_of_a_niced_ingestion(
    env: dict[str, str], start_worker: Any
) -> None:
    worker = start_worker()
    pools: dict[str, list[int]] = {}
    for pid in _descendants(worker.process.pid):
        queues = _queues_of(pid)
        if queues:
            pools.setdefault(queues, []).append(pid)
    # Query encoding never shares a process with catalogue batches; the store owner pops queries first.
    assert set(pools) == {"lookalike.fetch", "lookalike.embed", "lookalike.encode", "lookalike.query,lookalike.index"}
    base = _niceness(worker.process.pid)  # the test itself may run niced
    for queues, pids in pools.items():
        catalogue = queues in ("lookalike.fetch", "lookalike.embed")
        wanted = min(19, base + 10) if catalogue else base
        for process in pids + [child for pid in pids for child in _descendants(pid)]:  # prefork children inherit it
            assert _niceness(process) == wanted, (queues, process)
            # ... and the scheduling class: the catalogue's only when nothing else wants a core.
            assert (os.sched_getscheduler(process) == os.SCHED_IDLE) == catalogue, (queues, process)


def test_the_store_owner_takes_waiting_queries_before_the_next_index_batch(
    env: dict[str, str], start_worker: Any
) -> None:
    from lookalike.state.tasks import RECONCILE_TASK, SEARCH_TASK
    from lookalike.worker.app import create_app

    app = create_app()
    # Work piles up before the store owner starts: 60 index-queue jobs first, then 8 shoppers' queries.
    batches = [app.send_task(RECONCILE_TASK, args=[[f"gone-{i}"]], ignore_result=False) for i in range(60)]
    query = SearchRequest(text="red kettle", mode="keyword", k=3).to_message()
    queries = [app.send_task(SEARCH_TASK, args=[query]) for _ in range(8)]
    start_worker("--queues", "query,index", ready_queues=2)
    for result in queries:
        assert result.get(timeout=60)["results"] == []
    for result in batches:
        result.get(timeout=60)
    last_query = max(result.date_done for result in queries)
    batch_times = sorted(result.date_done for result in batches)
    # Round robin would interleave them (8 batches done before the last query); queries come first.
    assert last_query <= batch_times[1], (last_query, batch_times[:3])


# -------------------------------------------------------------------------------------- one chain, expiry
def _catalogue(cli: Any, image_server: ImageServer, tmp_path: Path) -> bytes:
    url = image_server.add("/shop/a.jpg", Route(body=images.product_bytes(31)))
    assert cli("ingest", str(write_catalog(tmp_path / "c.csv", [catalog_row("k1", "K1", [url])])), "--wait").code == 0
    return images.product_bytes(31)


def _result_keys(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter("celery-task-meta-*"))


def test_a_photo_query_is_one_message_and_one_result_for_its_sender(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any, redis_client: Any
) -> None:
    from lookalike.app.gateway import Gateway
    from lookalike.config.settings import get_settings

    start_worker()
    photo = _catalogue(cli, image_server, tmp_path)
    gateway = Gateway(get_settings())
    gateway.search(SearchRequest(text="k1", mode="keyword", k=3))  # the gateway's reading of the workers
    before = _result_keys(redis_client)
    answer = gateway.search(SearchRequest(image=photo, k=3), timeout=20)
    assert answer["results"][0]["product_id"] == "k1"
    # The encode step handed its vector to the search itself: only the search's answer was stored.
    assert _result_keys(redis_client) == before + 1


def test_a_query_the_sender_gave_up_on_expires_unrun_and_its_photo_crossed_redis_reduced(
    env: dict[str, str], start_worker: Any, redis_client: Any
) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeout

    from lookalike.app.gateway import Gateway, ask_workers
    from lookalike.config.settings import get_settings
    from lookalike.worker.app import app

    start_worker("--queues", "query,index", ready_queues=2)  # nobody encodes yet
    noise = np.random.default_rng(7).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    photo = buffer.getvalue()
    assert len(photo) > 5_000_000
    with pytest.raises(CeleryTimeout):
        # What the gateway sends once its routing found the workers: the photo prepared here, then the chain.
        prepared = Gateway(get_settings()).preparer.prepare(SearchRequest(image=photo, k=3))
        ask_workers(app, prepared, timeout=1.0)
    waiting = redis_client.lrange("lookalike.encode", 0, -1)
    assert len(waiting) == 1
    envelope = json.loads(waiting[0])
    assert len(waiting[0]) < 64 * 1024, "the photo crossed the broker as the 224x224 transport JPEG"
    assert envelope["headers"]["expires"]
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    assert args[0]["prepared"] is True and len(base64.b64decode(args[0]["image_b64"])) < 48 * 1024

    start_worker("--queues", "encode", ready_queues=0).wait_ready(3)  # query, index and now encode
    deadline = time.monotonic() + 30
    while redis_client.llen("lookalike.encode") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert redis_client.llen("lookalike.encode") == 0
    time.sleep(1.0)
    # Expired: not encoded, so no search was ever sent to the store owner and nothing answered.
    assert redis_client.llen("lookalike.query") == 0
    assert _result_keys(redis_client) == 0


def test_a_query_timeout_not_longer_than_the_shoppers_download_deadline_is_one_line_and_exit_2(cli: Any) -> None:
    result = cli(
        "search", "--text", "kettle", extra={"LOOKALIKE_QUERY_TIMEOUT": "4", "LOOKALIKE_QUERY_FETCH_DEADLINE": "5"}
    )
    assert result.code == 2
    assert "LOOKALIKE_QUERY_TIMEOUT" in result.stderr and "LOOKALIKE_QUERY_FETCH_DEADLINE" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ optimize
def test_the_store_owner_defers_an_optimize_while_shoppers_query(env: dict[str, str], start_worker: Any) -> None:
    from lookalike.state.tasks import OPTIMIZE_TASK, SEARCH_TASK
    from lookalike.worker.app import create_app

    app = create_app()
    start_worker("--queues", "query,index", ready_queues=2, extra={"LOOKALIKE_OPTIMIZE_QUIET": "3"})
    deferred = {"optimized": False, "deferred": True}
    # A store owner that just started has not seen the shoppers yet: it waits for a quiet moment first.
    assert app.send_task(OPTIMIZE_TASK, ignore_result=False).get(timeout=30) == deferred
    time.sleep(3.5)
    assert app.send_task(OPTIMIZE_TASK, ignore_result=False).get(timeout=30) == {"optimized": True}
    query = SearchRequest(text="kettle", mode="keyword", k=3).to_message()
    assert app.send_task(SEARCH_TASK, args=[query]).get(timeout=30)["results"] == []
    assert app.send_task(OPTIMIZE_TASK, ignore_result=False).get(timeout=30) == deferred
    # And queries keep being answered while the optimize waits for its quiet moment.
    started = time.monotonic()
    assert app.send_task(SEARCH_TASK, args=[query]).get(timeout=30)["results"] == []
    assert time.monotonic() - started < 5


def test_lookalike_search_with_a_url_only_the_catalogue_may_reach_is_fetch_failed_and_reaches_nothing(
    cli: Any, image_server: ImageServer, tmp_path: Path
) -> None:
    url = image_server.add("/cli/private.jpg", Route(body=images.product_bytes(51)))
    result = cli(
        "search", url, extra={"LOOKALIKE_FETCH_ALLOW_NETWORKS": "127.0.0.0/8", "LOOKALIKE_QUERY_ALLOW_NETWORKS": ""}
    )
    assert result.code == 2, result.stderr
    assert "fetch_failed" in result.stderr and "Traceback" not in result.stderr
    assert image_server.hits() == 0
