"""`lookalike worker`: one command that starts a Celery worker per pool type and supervises them.

Shoppers first: a query never waits behind the catalogue. Downloads are I/O-bound and embedding is CPU-bound,
so they never share a slot, and shoppers' work has its own processes:

* ``fetch``  - thread pool, many threads (downloads, decoding to model size, batching), niced;
* ``embed``  - prefork pool, one process per core (ONNX threads x processes <= cores), model loaded after fork,
  niced (``LOOKALIKE_INGEST_NICENESS``): the catalogue's batches get every cycle shoppers leave idle;
* ``encode`` - the shoppers' own prefork pool (``LOOKALIKE_QUERY_CONCURRENCY`` processes, not niced, each with
  the usable CPUs as ONNX threads): a query's image or words become a vector here, never behind a 32-image
  batch; it then hands the vector to the store owner's search itself (one round trip for the API);
* ``store``  - the ``query`` and ``index`` queues, queries first (the broker pops ``lookalike.query`` before
  ``lookalike.index``, see ``queue_order_strategy`` in :mod:`lookalike.worker.app`); a query there only
  searches, with the vector it is given. With the embedded store it is a single process (solo pool), because an
  embedded store directory admits one process; with a Qdrant server it is a small thread pool and any number of
  machines may run one.

Niceness is applied to the pool's Celery process before it starts (so its prefork children inherit it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lookalike.config.settings import Settings
from lookalike.state.queues import EMBED_QUEUE, ENCODE_QUEUE, FETCH_QUEUE, INDEX_QUEUE, QUERY_QUEUE, QUEUE_ALIASES


@dataclass(frozen=True)
class PoolSpec:
    name: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    niceness: int = 0  # added to the process's own (ingestion pools: LOOKALIKE_INGEST_NICENESS)

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
                    name, (FETCH_QUEUE,), "threads", fetch_threads or settings.fetch_concurrency,
                    settings.ingest_niceness,
                )
            )
    if EMBED_QUEUE in queues:
        pools.append(
            PoolSpec(
                "embed", (EMBED_QUEUE,), "prefork", concurrency or settings.effective_embed_concurrency,
                settings.ingest_niceness,
            )
        )
    if ENCODE_QUEUE in queues:
        # Shoppers' encoding on processes of their own: a query never waits for a catalogue batch to finish
        # (a 32-image batch at ViT-B/32 cost is over a second), and, not niced, it takes the CPU first.
        pools.append(PoolSpec("encode", (ENCODE_QUEUE,), "prefork", settings.query_concurrency))
    # Queries first: with the "priority" queue order the store owner pops a waiting query before the next batch.
    store_queues = tuple(q for q in (QUERY_QUEUE, INDEX_QUEUE) if q in queues)
    if store_queues:
        if settings.uses_embedded_store:
            pools.append(PoolSpec("store", store_queues, "solo", 1))
        else:
            pools.append(PoolSpec("store", store_queues, "threads", 4))
    return pools


def _nicer(increment: int) -> Callable[[], None]:
    """What the child runs before it starts Celery: lower its own CPU priority (async-signal-safe: one call)."""

    def nice() -> None:
        os.nice(increment)

    return nice


class WorkerGroup:
    """Child Celery workers, started together and stopped together."""

    def __init__(self, pools: list[PoolSpec], *, loglevel: str = "WARNING", log_path: Path | None = None) -> None:
        self.pools = pools
        self.loglevel = loglevel
        self.log_path = log_path
        self.processes: list[tuple[PoolSpec, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def _spawn(self, spec: PoolSpec) -> subprocess.Popen[bytes]:
        niced = _nicer(spec.niceness) if spec.niceness else None
        if self.log_path is None:
            return subprocess.Popen(spec.command(self.loglevel), preexec_fn=niced)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                spec.command(self.loglevel), stdout=log, stderr=subprocess.STDOUT, preexec_fn=niced
            )

    def start(self, handle_signals: bool = False) -> None:
        """Start every pool; with ``handle_signals``, SIGINT/SIGTERM from now on mean "stop them all" (set before
        the first child exists, so no signal can leave children running without their supervisor)."""
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._request_stop)
        for spec in self.pools:
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
                    if len(recent) >= max_restarts:
                        print(
                            f"lookalike worker: the {spec.name} pool exited with code {code} {len(recent)} times "
                            f"in {window:g}s; stopping",
                            file=sys.stderr,
                        )
                        self.stop()
                        return code or 1
                    print(
                        f"lookalike worker: the {spec.name} pool exited with code {code}; restarting it",
                        file=sys.stderr,
                    )
                    time.sleep(1.0)
                    self.restart(index)
                time.sleep(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stop()
        return 0
