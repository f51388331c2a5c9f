"""Running out of something: the store's disk fills, Redis reaches maxmemory, a pool dies, nobody consumes a
queue. lookalike says so at once, never hangs, and counts nothing as lost: each test ends with the run complete
after the space (or memory, or worker) returns, every image indexed exactly once and nothing in `failures`.

Real things throughout: the installed `lookalike` command, `lookalike worker` subprocesses, a real tmpfs for
the store where this machine lets the test mount one (else a fault-injected free-space reading, said so), and a
real redis-server with a small maxmemory on a port of its own. ``TESTS_WITHOUT_MOUNT=1`` runs the
fallback of the disk test on a machine that could mount.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from lookalike.state.queues import FETCH_QUEUE, INDEX_QUEUE, queue_depths
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.worker import pipeline

from conftest import LOOKALIKE, open_test_store, set_env, wait_for_run

MIB = 1024 * 1024
# Ports for the servers these tests start (a redis-server, the API), apart from other suites'.
PORTS = range(18300, 18400)


def catalogue(server: ImageServer, path: Path, count: int, prefix: str = "x", per_product: int = 4) -> Path:
    rows = []
    for start in range(0, count, per_product):
        urls = [
            server.add(f"/{prefix}/{i}.jpg", Route(body=images.product_bytes(i, size=(160, 120))))
            for i in range(start, min(start + per_product, count))
        ]
        rows.append(catalog_row(f"{prefix}-{start:05d}", f"Item {start}", urls))
    return write_catalog(path, rows)


def wait_until(predicate: Any, timeout: float, what: str, poll: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(poll)


def run_counters(run_id: str) -> dict[str, Any]:
    return pipeline.current_context().ledger.run(run_id) or {}


def assert_indexed_once(run_id: str, count: int) -> None:
    run = run_counters(run_id)
    assert run.get("indexed", 0) == count and run.get("failed", 0) == 0, run
    store = open_test_store()
    try:
        assert store.count() == count  # deterministic point ids: a batch written twice wrote the same points
    finally:
        store.close()


def free_port_in_range() -> int:
    import socket

    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ------------------------------------------------------------------------------------------ a small disk
@contextmanager
def small_filesystem(directory: Path, size_mib: int) -> Iterator[bool]:
    """A real tmpfs of ``size_mib`` at ``directory`` where this machine allows mounting (True), else a plain
    directory (False); always unmounted afterwards, even when the test fails."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.environ.get("TESTS_WITHOUT_MOUNT"):  # to run the fallback on a machine that could mount
        yield False
        return
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(directory)],
            check=True,
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=20)


# Loaded by every Python process of the fallback (PYTHONPATH): the free space under the store is a budget read
# from a file less what the store's files take on disk now, so the store fills a disk the test may not mount.
FAKE_FREE_SPACE = textwrap.dedent(
    """
    import os
    _budget_file = os.environ.get("LOOKALIKE_TEST_DISK_BUDGET_FILE")
    if _budget_file:
        from lookalike.worker import diskspace as _diskspace

        def _taken(path):
            return sum(
                os.stat(os.path.join(top, name)).st_blocks * 512
                for top, _dirs, names in os.walk(path)
                for name in names
            )

        def free_bytes(path):
            try:
                budget = int(open(_budget_file).read())
            except (OSError, ValueError):
                return 1 << 40
            return max(0, budget - _taken(path))

        _diskspace.free_bytes = free_bytes
    """
)


class Disk:
    """The store's filesystem, filled and freed by the test: a real tmpfs (a filler file takes the space), or,
    where mounting is refused, a fault-injected reading of the free space (a budget the store's files use up)."""

    def __init__(self, root: Path, mounted: bool, hooks: Path) -> None:
        self.root = root
        self.mounted = mounted
        self.filler = root / "filler"
        self.budget = hooks.parent / "disk-budget"
        self.env: dict[str, str] = {}
        if not mounted:
            hooks.mkdir(exist_ok=True)
            (hooks / "sitecustomize.py").write_text(FAKE_FREE_SPACE)
            self.budget.write_text(str(1 << 40))
            self.env = {
                "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]),
                "LOOKALIKE_TEST_DISK_BUDGET_FILE": str(self.budget),
            }

    def free(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def leave_free(self, remaining: int) -> None:
        """Take space until about ``remaining`` bytes are left."""
        if not self.mounted:
            taken = sum(entry.stat().st_blocks * 512 for entry in self.root.rglob("*") if entry.is_file())
            self.budget.write_text(str(taken + remaining))
            return
        with self.filler.open("wb") as handle:
            chunk = b"\0" * MIB
            while self.free() - len(chunk) > remaining:
                handle.write(chunk)
                handle.flush()

    def give_back(self) -> None:
        if self.mounted:
            self.filler.unlink(missing_ok=True)
        else:
            self.budget.write_text(str(1 << 40))


def metrics_text(ctx: Any) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    from lookalike.state.queues import ALL_QUEUES
    from lookalike.worker.metrics import LookalikeCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LookalikeCollector(ctx, ALL_QUEUES))
    return generate_latest(registry).decode()


@contextmanager
def api_server(environment: dict[str, str]) -> Iterator[str]:
    """`lookalike serve` on a port of this suite's range; stopped afterwards."""
    port = free_port_in_range()
    process = subprocess.Popen(
        [LOOKALIKE, "serve", "--port", str(port)],
        env={**os.environ, **environment},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2).close()
                return True
            except OSError:
                return False

        wait_until(answers, 60, "the API to answer")
        yield base
    finally:
        stop(process)


def readyz(base: str) -> dict[str, Any]:
    import json
    import urllib.error

    try:
        with urllib.request.urlopen(base + "/readyz", timeout=30) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def test_a_full_store_disk_makes_index_batches_wait_then_everything_is_indexed_once_when_space_returns(
    cli, env, monkeypatch, server, tmp_path, start_worker
):
    root = Path(f"/tmp/exhaustion/disk-{os.getpid()}")
    # Room for the collection (~11 MiB), and for the test to open the store afterwards: the engine writes
    # tens of MiB into its files when it loads an existing store.
    with small_filesystem(root, 128) as mounted:
        try:
            print(
                "the store's disk: "
                + (
                    "a real 128 MiB tmpfs"
                    if mounted
                    else "no tmpfs (mounting refused, or TESTS_WITHOUT_MOUNT): a fault-injected free-space reading"
                )
            )
            disk = Disk(root, mounted, tmp_path / "hooks")
            store_path = root / "qdrant"
            set_env(
                monkeypatch,
                env,
                LOOKALIKE_QDRANT_PATH=str(store_path),
                LOOKALIKE_STORE_MIN_FREE_BYTES=str(4 * MIB),
                LOOKALIKE_EMBED_HIGH_WATER="2",  # downloads pause while index batches wait for the disk
                **disk.env,
            )
            worker = start_worker()  # the store owner creates the collection (~11 MiB of it) on start
            disk.leave_free(4 * MIB + 512 * 1024)  # about a hundred points, then the disk is "full"
            catalog = catalogue(server, tmp_path / "disk.csv", 600, prefix="disk")
            started = time.monotonic()
            ingested = cli("ingest", str(catalog), "--json")
            assert ingested.code == 0, ingested.stderr
            run_id = ingested.json()["run_id"]

            def disk_full_said() -> list[Any]:
                data = cli("status", "--json").json()
                return [c for c in data["conditions"] if c["kind"] == "store_disk_full"]

            [condition] = wait_until(disk_full_said, 120, "status to say the disk is full")
            assert condition["path"] == str(store_path)
            shown = cli("status")
            assert shown.code == 0, shown.stderr
            assert f"store: disk full at {store_path} (" in shown.stdout and " MiB free)" in shown.stdout
            stuck = run_counters(run_id).get("indexed", 0)
            assert stuck < 600, "the disk was supposed to fill before the end"
            with api_server(env) as api:
                ready = readyz(api)
            assert any(f"store: disk full at {store_path}" in line for line in ready.get("conditions", [])), ready
            ctx = pipeline.current_context()
            deferred = [
                line for line in metrics_text(ctx).splitlines() if line.startswith("lookalike_store_disk_full_total")
            ]
            assert deferred and float(deferred[0].split()[-1]) >= 1, deferred
            assert 'lookalike_conditions{kind="store_disk_full"} 1.0' in metrics_text(ctx)
            time.sleep(6)  # batches keep coming back; none is failed, none crashes the store owner
            assert run_counters(run_id).get("failed", 0) == 0
            depths = queue_depths(ctx.redis, (FETCH_QUEUE, INDEX_QUEUE))
            # Backpressure holds: the jobs wait as small fetch jobs, not as a growing pile of batches in Redis.
            assert depths[INDEX_QUEUE] <= 8 and depths[FETCH_QUEUE] > 0, depths
            assert cli("failures", "--json").json() == []
            assert worker.process.poll() is None

            disk.give_back()
            wait_for_run(run_id, timeout=180)  # resumes by itself
            took = time.monotonic() - started
            assert worker.stop() == 0
            assert_indexed_once(run_id, 600)
            assert cli("failures", "--json").json() == []
            assert cli("status", "--json").json()["conditions"] == []
            log = worker.output()
            said = log.count("disk full at")
            assert 1 <= said <= 1 + took / 60, log[-5000:]  # once a minute, not once a batch
            assert "rejected" not in log, log[-5000:]  # Celery's per-message warning stays quiet
            assert "space is back" in log
        finally:
            pipeline.reset_context()
            shutil.rmtree(root / "qdrant", ignore_errors=True)


# ------------------------------------------------------------------------------------------ a full Redis
@contextmanager
def small_redis(directory: Path) -> Iterator[int]:
    """A real redis-server on this suite's ports (no persistence, noeviction), stopped afterwards; yields its
    port. Its maxmemory is set by the test with CONFIG SET."""
    port = free_port_in_range()
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction", "--dir", str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, 30, "the small Redis to answer")
        yield port
    finally:
        stop(process)


def test_a_full_broker_pauses_the_producer_hands_messages_back_and_fails_nothing(
    cli, env, monkeypatch, server, tmp_path, start_worker
):
    from lookalike.state.failures import Failure

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with small_redis(tmp_path / "redis") as port:
        try:
            set_env(monkeypatch, env, LOOKALIKE_BROKER_URL=f"redis://127.0.0.1:{port}/0")
            broker = redis.Redis(port=port)
            catalog = catalogue(server, tmp_path / "full.csv", 400, prefix="oom")
            # What an earlier release left: an image recorded as failed because Redis was full.
            stale = Failure("oom-00000", server.url("/oom/0.jpg"), "fetch", "internal_OutOfMemoryError", "r0")
            pipeline.current_context().failures.add([stale])
            worker = start_worker()
            used = int(broker.info("memory")["used_memory"])
            # Room to start a run, not for its 400 jobs (~520 kB) nor for a batch of 32 decoded images (~480 kB):
            # the producer and the workers both meet the full broker, whatever the timing.
            limit = used + 128 * 1024
            broker.config_set("maxmemory", limit)

            log = tmp_path / "ingest.log"
            with log.open("w") as stderr:
                ingest = subprocess.Popen(
                    [LOOKALIKE, "ingest", str(catalog), "--wait", "--json"],
                    env={**os.environ, **env},
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            try:
                said = f"the broker is out of memory (maxmemory {limit / MIB:.1f} MiB)"
                wait_until(lambda: said in log.read_text(), 120, "ingest to say the broker is full")
                wait_until(lambda: said in worker.output(), 120, "the workers to say the broker is full")
                assert int(broker.info("errorstats").get("errorstat_OOM", {}).get("count", 0)) > 0
                shown = cli("status")  # reads still work on a full broker
                assert shown.code == 0 and f"maxmemory {limit / MIB:.1f} MiB)" in shown.stdout, shown
                assert "broker: out of memory (" in shown.stdout
                time.sleep(5)  # full for a while: the producer waits, the workers hand messages back
                assert ingest.poll() is None, log.read_text()
                assert run_failed_nothing(broker)

                broker.config_set("maxmemory", 0)  # memory returns
                out, _ = ingest.communicate(timeout=240)
            finally:
                if ingest.poll() is None:
                    ingest.kill()
                    ingest.wait()
            assert ingest.returncode == 0, log.read_text()[-3000:]
            import json

            summary = json.loads(out)
            assert summary["images_enqueued"] == 400
            assert summary["result"]["indexed"] == 400 and summary["result"]["failed"] == 0, summary
            assert worker.stop() == 0
            assert_indexed_once(summary["run_id"], 400)
            assert pipeline.current_context().failures.entries() == []  # the stale entry went when it was indexed
        finally:
            pipeline.reset_context()


def run_failed_nothing(broker: redis.Redis) -> bool:
    """No run counted a failure and nothing is in the failure log (read straight from the small Redis)."""
    prefix = "lookalike-test"
    failed = [broker.hget(key, "failed") for key in broker.scan_iter(f"{prefix}:run:*") if b":done" not in key]
    return not any(value and int(value) for value in failed) and broker.llen(f"{prefix}:failures") <= 1


# ------------------------------------------------------------------------------------------ a pool dies
SIGBUS_STORE = textwrap.dedent(
    """
    # Loaded by every Python process of this test (PYTHONPATH): the store pool's process says a last word and
    # dies of SIGBUS as it starts, as the embedded engine does when it writes a mapped page on a full disk.
    import os, signal, sys
    if os.environ.get("LOOKALIKE_TEST_SIGBUS_STORE") and "lookalike.index" in " ".join(sys.argv):
        print("edge: mapping a segment page", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGBUS)
    """
)


def pool_pids(supervisor: int, queue: str) -> list[int]:
    """Processes started by ``supervisor`` whose command line names ``queue`` (its pools)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == supervisor and queue in command:
            found.append(int(entry.name))
    return found


def test_a_pool_killed_by_sigkill_is_named_with_its_likely_cause_and_restarted(
    cli, env, server, tmp_path, start_worker
):
    worker = start_worker()
    [store_pool] = pool_pids(worker.process.pid, "lookalike.index")
    os.kill(store_pool, signal.SIGKILL)
    said = (
        "the store pool was killed by SIGKILL: the kernel's OOM killer (see `dmesg`) or an operator; "
        "its last log line: "
    )
    wait_until(lambda: said in worker.output(), 60, "the supervisor to name the cause")
    line = next(line for line in worker.output().splitlines() if said in line)
    assert line.endswith("; restarting it"), line
    worker.wait_ready()  # restarted: the run goes through
    catalog = catalogue(server, tmp_path / "kill.csv", 20, prefix="kill")
    ingested = cli("ingest", str(catalog), "--json")
    assert ingested.code == 0, ingested.stderr
    wait_for_run(ingested.json()["run_id"], timeout=120)
    assert worker.stop() == 0
    assert_indexed_once(ingested.json()["run_id"], 20)


def test_a_store_pool_dying_of_sigbus_says_disk_full_stops_and_status_shows_the_stopped_pool(
    cli, env, monkeypatch, server, tmp_path, start_worker
):
    import socket

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SIGBUS_STORE)
    set_env(monkeypatch, env, LOOKALIKE_VISIBILITY_TIMEOUT="60")
    catalog = catalogue(server, tmp_path / "bus.csv", 20, prefix="bus")
    ingested = cli("ingest", str(catalog), "--json")
    assert ingested.code == 0, ingested.stderr
    run_id = ingested.json()["run_id"]

    sick = start_worker(ready_queues=0, extra={"PYTHONPATH": str(hooks), "LOOKALIKE_TEST_SIGBUS_STORE": "1"})
    sick.process.wait(timeout=180)  # five deaths in a minute: the supervisor stops everything
    assert sick.process.returncode != 0
    store_path = env["LOOKALIKE_QDRANT_PATH"]
    lines = [line for line in sick.output().splitlines() if "the store pool was killed by SIGBUS" in line]
    assert len(lines) == 5, sick.output()[-5000:]
    for line in lines:
        assert f"most likely disk full ({store_path}: " in line and " MiB free)" in line, line
        assert "its last log line: edge: mapping a segment page" in line, line
    assert lines[-1].endswith("5 times in 60s: stopping"), lines[-1]

    shown = cli("status")
    host = socket.gethostname()
    assert f"worker: on {host}, the store pool was killed by SIGBUS" in shown.stdout, shown.stdout
    [stopped] = [c for c in cli("status", "--json").json()["conditions"] if c["kind"] == "pool_stopped"]
    assert stopped["pool"] == "store" and stopped["host"] == host

    healthy = start_worker()  # the pool starts again on this host: no stale line, and the run completes
    assert cli("status", "--json").json()["conditions"] == []
    wait_for_run(run_id, timeout=180)
    assert healthy.stop() == 0
    assert_indexed_once(run_id, 20)
    assert cli("failures", "--json").json() == []


# ------------------------------------------------------------------------------------------ nobody works
def test_ingest_wait_names_the_queue_nobody_consumes_and_exits_3_after_the_deadline(
    cli, env, monkeypatch, server, tmp_path, start_worker
):
    set_env(monkeypatch, env, LOOKALIKE_WAIT_GRACE="3", LOOKALIKE_WAIT_DEADLINE="8")
    start_worker("--queues", "fetch,embed", ready_queues=2)  # no store owner: lookalike.index fills up
    catalog = catalogue(server, tmp_path / "nobody.csv", 40, prefix="nobody")
    started = time.monotonic()
    waited = cli("ingest", str(catalog), "--wait", "--json", timeout=170)
    assert waited.code == 3, waited.stderr
    assert time.monotonic() - started < 150  # the deadline, not the 170 s timeout, ended it
    said = "no live worker consumes lookalike.index, which holds "
    assert said in waited.stderr and "start `lookalike worker` (every queue) or `lookalike worker --queues index`" in (
        waited.stderr
    ), waited.stderr
    assert "giving up in " in waited.stderr  # said after the grace, before the deadline
    assert "error: gave up after " in waited.stderr
    run_id = pipeline.current_context().ledger.run_ids(1)[0]
    assert run_counters(run_id).get("indexed", 0) == 0

    store_owner = start_worker("--queues", "index,query", ready_queues=4)  # what the message said to start
    wait_for_run(run_id, timeout=120)  # nothing was lost by giving up
    assert store_owner.stop() == 0
    assert_indexed_once(run_id, 40)
    assert cli("failures", "--json").json() == []


def test_a_rerun_reports_jobs_earlier_runs_left_waiting_and_its_wait_waits_for_them(cli, env, server, tmp_path):
    catalog = catalogue(server, tmp_path / "rerun.csv", 40, prefix="rerun")
    first = cli("ingest", str(catalog), "--json")  # no worker: the jobs wait in the queue
    assert first.code == 0 and first.json()["images_enqueued"] == 40, first.stderr
    again = cli("ingest", str(catalog))
    assert again.code == 0, again.stderr
    assert "40 jobs from earlier runs still waiting: start `lookalike worker`" in again.stderr, again.stderr
    assert "images    0 enqueued" in again.stdout
    assert "earlier   40 jobs from earlier runs were still waiting" in again.stdout

    # --wait with no worker running starts local ones for the command, and waits for the earlier jobs too.
    waited = cli("ingest", str(catalog), "--wait", "--json")
    assert waited.code == 0, waited.stderr
    assert "40 jobs from earlier runs still waiting: the local workers take them too" in waited.stderr
    summary = waited.json()
    assert summary["images_enqueued"] == 0 and summary["earlier_pending"] == 40, summary
    assert run_counters(first.json()["run_id"]).get("indexed") == 40  # it returned only once they were done
    assert_indexed_once(first.json()["run_id"], 40)
    assert cli("failures", "--json").json() == []


def test_a_wait_for_the_store_owner_gives_up_when_none_is_alive_and_lost_jobs_point_to_reconcile(redis_client):
    """The watchdog itself, on the real Redis with a hand-moved clock: what `reconcile` and `reindex` wait with
    (their task is in no queue once taken, so the store queue needs a live consumer at all times), and the
    jobs that are nowhere."""
    from lookalike.state.presence import Presence
    from lookalike.state.queues import INDEX_QUEUE
    from lookalike.state.waiting import NobodyWorking, Watchdog

    now = [0.0]
    said: list[str] = []
    watch = Watchdog(
        redis_client, "lookalike-test", grace=30, deadline=120, note=said.append, queues=(INDEX_QUEUE,),
        what="this reconcile", need_consumer=True, clock=lambda: now[0],
    )  # fmt: skip
    watch.check()
    now[0] = 31
    watch.check()
    assert said == [
        "no live worker consumes lookalike.index, which this reconcile needs: start `lookalike worker` (every queue) "
        "or `lookalike worker --queues index` (giving up in 89s)"
    ]
    Presence(redis_client, "lookalike-test").beat("store.1@host", [INDEX_QUEUE])  # a store owner comes back
    now[0] = 200
    watch.check()  # no longer stalled: the clock starts again if it goes
    Presence(redis_client, "lookalike-test").leave("store.1@host")
    watch.check()
    now[0] = 321
    with pytest.raises(NobodyWorking, match=r"gave up after 121s: no live worker consumes lookalike\.index"):
        watch.check()

    lost = Watchdog(redis_client, "lookalike-test", grace=30, deadline=120, note=said.append, clock=lambda: now[0])
    lost.check(pending=3)  # three jobs without an outcome, and nothing in any queue or in any worker's hands
    now[0] += 120
    with pytest.raises(NobodyWorking, match=r"3 jobs of this run are in no queue .*`lookalike reconcile`"):
        lost.check(pending=3)


def test_a_pools_exit_code_is_told_as_its_likely_cause(tmp_path):
    from lookalike.worker.runner import exit_cause

    assert exit_cause(-signal.SIGBUS, store_path=tmp_path).startswith(
        f"was killed by SIGBUS: a memory-mapped store file could not be written, most likely disk full ({tmp_path}: "
    )
    assert "most likely a full disk" in exit_cause(-signal.SIGBUS)
    assert exit_cause(-signal.SIGKILL) == "was killed by SIGKILL: the kernel's OOM killer (see `dmesg`) or an operator"
    assert exit_cause(-signal.SIGSEGV) == "crashed (SIGSEGV)"
    assert exit_cause(1) == "exited with code 1"
