"""Carrying out a sync plan: publish its jobs (with backpressure) and reconciles, then settle it.

Publishing is injected (``Publisher``), so this module knows nothing of Celery; the CLI and the event listener
pass the Celery-backed publisher from the gateway (:mod:`lookalike.app.gateway`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from lookalike.producer.sync import SyncPlan
from lookalike.state.brokerfull import BrokerOutOfMemory, as_broker_full, out_of_memory
from lookalike.state.ledger import Ledger
from lookalike.state.messages import Job
from lookalike.state.queues import wait_below
from lookalike.state.registry import ProductRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")

JOB_CHUNK = 1000
RECONCILE_CHUNK = 100


class Publisher(Protocol):
    def publish_jobs(self, jobs: Sequence[Job]) -> None: ...

    def publish_reconcile(self, product_ids: Sequence[str], run_id: str) -> None: ...

    def fetch_depth(self) -> int: ...


@dataclass
class Backpressure:
    """When the producer pauses: while the fetch queue is above ``high_water``, and while the broker is out of
    memory (its writes are retried every ``memory_poll`` seconds until they go through; see
    :mod:`lookalike.state.brokerfull`). ``on_wait`` and ``on_broker_full`` are told once per pause."""

    high_water: int
    on_wait: Callable[[int], None] | None = None
    waited: float = 0.0
    on_broker_full: Callable[[str], None] | None = None
    memory_poll: float = 1.0
    _full: bool = False

    def until_room(self, action: Callable[[], T], broker: Any = None) -> T:
        """``action()``, retried while the broker refuses it for want of memory."""
        while True:
            try:
                result = action()
            except Exception as exc:
                if not out_of_memory(exc):
                    raise
                self.pause_for_memory(exc, broker)
                continue
            self._full = False
            return result

    def pause_for_memory(self, error: BaseException, broker: Any = None) -> None:
        if not self._full:
            full = error if isinstance(error, BrokerOutOfMemory) else None
            if full is None:
                full = as_broker_full(error, broker) if broker is not None else BrokerOutOfMemory(None)
            message = f"{full}; pausing until it has room"
            if self.on_broker_full is not None:
                self.on_broker_full(message)
            else:
                log.warning("%s", message)
            self._full = True
        time.sleep(self.memory_poll)
        self.waited += self.memory_poll


def carry_out(
    plan: SyncPlan,
    publisher: Publisher,
    registry: ProductRegistry,
    backpressure: Backpressure,
    *,
    run_id: str,
    ledger: Ledger,
    on_published: Callable[[int], None] | None = None,
) -> None:
    """Publish everything the plan asks for, pausing while the fetch queue is above its high-water mark.

    The run's counters grow as messages go out (``enqueued`` jobs, ``reconciles`` batches), counted after each
    publish: a producer killed in between can leave a count short, never one that waits for jobs that do not
    exist. An ingest run is only finished once its status says everything was published.
    """
    room = backpressure.until_room
    broker = getattr(publisher, "redis", None)
    for start in range(0, len(plan.jobs), JOB_CHUNK):
        backpressure.waited += wait_below(publisher.fetch_depth, backpressure.high_water, on_wait=backpressure.on_wait)
        chunk = plan.jobs[start : start + JOB_CHUNK]
        while chunk:
            try:
                publisher.publish_jobs(chunk)
            except BrokerOutOfMemory as full:  # the jobs before the refusal are out: go on from there
                chunk = chunk[full.published :]
                backpressure.pause_for_memory(full)
                continue
            break
        count = len(plan.jobs[start : start + JOB_CHUNK])
        room(partial(ledger.add, run_id, {"enqueued": count}), broker)
        if on_published:
            on_published(count)
    for start in range(0, len(plan.reconcile), RECONCILE_CHUNK):
        ids = plan.reconcile[start : start + RECONCILE_CHUNK]
        room(partial(publisher.publish_reconcile, ids, run_id), broker)
        room(partial(ledger.add, run_id, {"reconciles": 1}, global_too=False), broker)
    room(partial(registry.settle, plan.settle), broker)
