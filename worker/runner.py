"""`lookalike worker`: one command that starts a Celery worker per pool type and supervises them.

Shoppers first: a query never waits behind the catalogue. Downloads are I/O-bound and embedding is CPU-bound,
so they never share a slot, and shoppers' work has its own processes:

* ``fetch``  - thread pool (a batch of jobs a thread, their downloads on ``FETCH_CONCURRENCY`` threads; decoding to
  model size, batching), niced;
* ``embed``  - prefork pool, one process per core (ONNX threads x processes <= cores), model loaded after fork,
  niced (``LOOKALIKE_INGEST_NICENESS``): the catalogue's batches get every cycle shoppers leave idle;
* ``encode`` - the shoppers' own processes (``LOOKALIKE_QUERY_CONCURRENCY`` of them, not niced, each with the
  usable CPUs as ONNX threads): a query's image or words become a vector here, never behind a 32-image batch;
  it then hands the vector to the store owner's search itself (one round trip for the API). Each is a solo
  Celery worker that runs the query in the process that took it off the queue (no hand-over to a prefork
  child and back on the shopper's path);
* ``store``  - the ``query`` and ``index`` queues, queries first (the broker pops ``lookalike.query`` before
  ``lookalike.index``, see ``queue_order_strategy`` in :mod:`lookalike.worker.app`); a query there only
  searches, with the vector it is given. With the embedded store it is a single process (solo pool), because an
  embedded store directory admits one process; with a Qdrant server it is a small thread pool and any number of
  machines may run one.

Niceness is applied to the pool's Celery process before it starts (so its prefork children inherit it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lookalike.config.settings import Settings
from lookalike.state.conditions import POOL_STOPPED, Conditions
from lookalike.state.queues import EMBED_QUEUE, ENCODE_QUEUE, FETCH_QUEUE, INDEX_QUEUE, QUERY_QUEUE, QUEUE_ALIASES

# How long `status` shows a pool that stopped for good (until a worker starts that pool again on its host).
STOPPED_POOL_TTL = 24 * 3600


@dataclass(frozen=True)
class PoolSpec:
    name: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    niceness: int = 0  # added to the process's own (ingestion pools: LOOKALIKE_INGEST_NICENESS)
    idle_class: bool = False  # SCHED_IDLE (ingestion pools with LOOKALIKE_INGEST_SCHED_IDLE)

    def command(self, loglevel: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "lookalike.worker.app",
            "worker",
            "--queues",
            ",".join(self.queues),
            "--pool",
            self.pool,
            "--concurrency",
            str(self.concurrency),
            "--hostname",
            f"{self.name}.{os.getpid()}@%h",
            "--prefetch-multiplier",
            "1",
            "--loglevel",
            loglevel,
            "--without-mingle",
            "--without-gossip",
        ]


def parse_queues(text: str | None) -> set[str]:
    """``fetch,embed`` or full queue names -> queue names; empty means every queue."""
    if not text:
        return set(QUEUE_ALIASES.values())
    chosen = set()
    for part in text.split(","):
        name = part.strip()
        if not name:
            continue
        queue = QUEUE_ALIASES.get(name, name)
        if queue not in QUEUE_ALIASES.values():
            raise ValueError(f"unknown queue {name!r}; choose from {', '.join(QUEUE_ALIASES)}")
        chosen.add(queue)
    return chosen


def fetch_pool_threads(downloads: int, batch: int) -> int:
    """Celery threads of a fetch pool whose ``downloads`` threads serve messages of ``batch`` jobs: enough
    messages for every download thread, and one more round waiting, not more. Each thread holds a reserved,
    unacknowledged message, so a message never waits behind more than two rounds of downloads (two deadlines,
    well inside the visibility timeout). One job a message: a thread each, as before."""
    rounds = -(-downloads // max(1, batch))
    return max(1, min(downloads, 2 * rounds))


def plan_pools(
    settings: Settings, queues: Iterable[str], *, concurrency: int | None, fetch_threads: int | None
) -> list[PoolSpec]:
    queues = set(queues)
    pools = []
    if FETCH_QUEUE in queues:
        for index in range(settings.fetch_processes):
            name = "fetch" if settings.fetch_processes == 1 else f"fetch{index + 1}"
            pools.append(
                PoolSpec(
                    name, (FETCH_QUEUE,), "threads",
                    fetch_pool_threads(fetch_threads or settings.fetch_concurrency, settings.fetch_batch),
                    settings.ingest_niceness, settings.ingest_sched_idle,
                )
            )
    if EMBED_QUEUE in queues:
        pools.append(
            PoolSpec(
                "embed", (EMBED_QUEUE,), "prefork", concurrency or settings.effective_embed_concurrency,
                settings.ingest_niceness, settings.ingest_sched_idle,
            )
        )
    if ENCODE_QUEUE in queues:
        # Shoppers' encoding on processes of their own: a query never waits for a catalogue batch to finish
        # (a 32-image batch at ViT-B/32 cost is over a second), and, not niced, it takes the CPU first.
        for index in range(settings.query_concurrency):
            name = "encode" if index == 0 else f"encode{index + 1}"
            pools.append(PoolSpec(name, (ENCODE_QUEUE,), "solo", 1))
    # Queries first: with the "priority" queue order the store owner pops a waiting query before the next batch.
    store_queues = tuple(q for q in (QUERY_QUEUE, INDEX_QUEUE) if q in queues)
    if store_queues:
        if settings.uses_embedded_store:
            pools.append(PoolSpec("store", store_queues, "solo", 1))
        else:
            pools.append(PoolSpec("store", store_queues, "threads", 4))
    return pools


def exit_cause(code: int, *, store_path: Path | None = None) -> str:
    """The likely cause of a pool's exit code, in words an operator can act on.

    A negative code is the signal that killed it. SIGBUS is what the kernel sends a process writing to a
    memory-mapped file that has no room left: for the store owner of an embedded store, a full disk. SIGKILL
    cannot be caught: the kernel's OOM killer or an operator (``kill -9``) sent it.
    """
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"was killed by signal {-code}"
    if name == "SIGBUS":
        if store_path is not None:
            from lookalike.worker.diskspace import free_bytes, mib

            where = f"{store_path}: {mib(free_bytes(store_path))} MiB free"
            return (
                "was killed by SIGBUS: a memory-mapped store file could not be written, most likely disk full "
                f"({where})"
            )
        return "was killed by SIGBUS: a memory-mapped file could not be written, most likely a full disk"
    if name == "SIGKILL":
        return "was killed by SIGKILL: the kernel's OOM killer (see `dmesg`) or an operator"
    if name in ("SIGSEGV", "SIGABRT", "SIGILL", "SIGFPE"):
        return f"crashed ({name})"
    return f"was killed by {name}"


class _LastLine:
    """Copies a pool's output to where it belongs (this terminal or the log file), keeping its last line."""

    def __init__(self, source: IO[bytes], sink: IO[bytes], *, own_sink: bool = False) -> None:
        self.line = ""
        self._source = source
        self._sink = sink
        self._own_sink = own_sink  # a log file opened for this pool: closed when its output ends
        self.thread = threading.Thread(target=self._pump, name="lookalike-pool-output", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for raw in iter(self._source.readline, b""):
            try:
                self._sink.write(raw)
                self._sink.flush()
            except (OSError, ValueError):
                pass
            text = raw.decode(errors="replace").strip()
            if text:
                self.line = text[:300]
        self._source.close()
        if self._own_sink:
            self._sink.close()
def _nicer(increment: int, idle_class: bool = False) -> Callable[[], None]:
    """What the child runs before it starts Celery: lower its own CPU priority (async-signal-safe: plain system
    calls), inherited by its threads and prefork children."""
    idle = getattr(os, "SCHED_IDLE", None) if idle_class else None

    def nice() -> None:
        if increment:
            os.nice(increment)
        if idle is not None:
            with contextlib.suppress(OSError):  # a sandbox that refuses it: niceness alone still applies
                os.sched_setscheduler(0, idle, os.sched_param(0))

    return nice


class WorkerGroup:
    """Child Celery workers, started together and stopped together."""

    def __init__(
        self,
        pools: list[PoolSpec],
        *,
        loglevel: str = "WARNING",
        log_path: Path | None = None,
        store_path: Path | None = None,
        conditions: Conditions | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: the children's environment (default: this process's); it carries the broker they use."""
        self.pools = pools
        self.env = env
        self.loglevel = loglevel
        self.log_path = log_path
        self.store_path = store_path  # the embedded store's directory, to explain a store pool's SIGBUS
        self.conditions = conditions  # where a stopped pool is said (lookalike status, /readyz)
        self.processes: list[tuple[PoolSpec, subprocess.Popen[bytes]]] = []
        self.output: dict[str, _LastLine] = {}
        self.stopping = False
        self.host = socket.gethostname()

    def _spawn(self, spec: PoolSpec) -> subprocess.Popen[bytes]:
        sink = self.log_path.open("ab") if self.log_path is not None else sys.stderr.buffer
        niced = _nicer(spec.niceness, spec.idle_class) if spec.niceness or spec.idle_class else None
        process = subprocess.Popen(
            spec.command(self.loglevel), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=niced,
            env=self.env,
        )
        assert process.stdout is not None
        self.output[spec.name] = _LastLine(process.stdout, sink, own_sink=self.log_path is not None)
        return process

    def death_line(self, spec: PoolSpec, code: int) -> str:
        """One line: which pool, the likely cause, and its last log line."""
        store = self.store_path if INDEX_QUEUE in spec.queues else None
        pump = self.output.get(spec.name)
        if pump is not None:
            pump.thread.join(timeout=2.0)  # its last words, once the pipe is drained
        last = pump.line if pump is not None and pump.line else "(none)"
        return f"the {spec.name} pool {exit_cause(code, store_path=store)}; its last log line: {last}"

    def start(self, handle_signals: bool = False) -> None:
        """Start every pool; with ``handle_signals``, SIGINT/SIGTERM from now on mean "stop them all" (set before
        the first child exists, so no signal can leave children running without their supervisor)."""
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._request_stop)
        for spec in self.pools:
            self._clear_stopped(spec)
            self.processes.append((spec, self._spawn(spec)))

    def _request_stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def pids(self) -> dict[str, int]:
        return {spec.name: process.pid for spec, process in self.processes}

    def dead(self) -> list[tuple[PoolSpec, int]]:
        return [(spec, process.returncode) for spec, process in self.processes if process.poll() is not None]

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM: finish running tasks), then SIGKILL what is left after ``timeout``."""
        for _spec, process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _spec, process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _say_stopped(self, spec: PoolSpec, line: str) -> None:
        """Leave the stopped pool where `lookalike status` and /readyz look (best effort: Redis may be the cause)."""
        if self.conditions is None:
            return
        try:
            self.conditions.report(
                POOL_STOPPED,
                f"worker: on {self.host}, {line}; fix it, then start `lookalike worker` again",
                ttl=STOPPED_POOL_TTL,
                key=f"{self.host}:{spec.name}",
                host=self.host,
                pool=spec.name,
                queues=list(spec.queues),
            )
        except Exception as exc:  # saying so must not hide the stop itself (Redis may be the cause)
            print(f"lookalike worker: could not record the stopped pool in Redis: {exc}", file=sys.stderr)

    def _clear_stopped(self, spec: PoolSpec) -> None:
        if self.conditions is None:
            return
        with contextlib.suppress(Exception):  # a stale line in status is not worth refusing to start
            self.conditions.clear(POOL_STOPPED, key=f"{self.host}:{spec.name}")

    def restart(self, index: int) -> None:
        spec, _old = self.processes[index]
        self.processes[index] = (spec, self._spawn(spec))

    def supervise(self, max_restarts: int = 5, window: float = 60.0) -> int:
        """Run until SIGINT/SIGTERM, restarting a pool that dies (its unfinished jobs come back to the queue by
        themselves); a pool that dies ``max_restarts`` times within ``window`` seconds stops everything.
        Returns the exit code."""
        deaths: dict[str, list[float]] = {}
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.stopping:
                for index, (spec, process) in enumerate(self.processes):
                    code = process.poll()
                    if code is None or self.stopping:
                        continue
                    now = time.monotonic()
                    recent = [t for t in deaths.get(spec.name, []) if now - t < window] + [now]
                    deaths[spec.name] = recent
                    line = self.death_line(spec, code)
                    if len(recent) >= max_restarts:
                        stopped = f"{line}; {len(recent)} times in {window:g}s: stopping"
                        print(f"lookalike worker: {stopped}", file=sys.stderr, flush=True)
                        self._say_stopped(spec, stopped)
                        self.stop()
                        return code or 1
                    print(f"lookalike worker: {line}; restarting it", file=sys.stderr, flush=True)
                    time.sleep(1.0)
                    self.restart(index)
                time.sleep(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stop()
        return 0
