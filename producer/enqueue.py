"""Carrying out a sync plan: publish its jobs (with backpressure) and reconciles, then settle it.

Publishing is injected (``Publisher``), so this module knows nothing of Celery; the CLI and the event listener
pass the Celery-backed publisher from :mod:`lookalike.worker.client`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lookalike.producer.sync import SyncPlan
from lookalike.worker.jobs import Job
from lookalike.worker.ledger import Ledger
from lookalike.worker.queues import wait_below
from lookalike.worker.registry import ProductRegistry

JOB_CHUNK = 1000
RECONCILE_CHUNK = 100


class Publisher(Protocol):
    def publish_jobs(self, jobs: Sequence[Job]) -> None: ...

    def publish_reconcile(self, product_ids: Sequence[str], run_id: str) -> None: ...

    def fetch_depth(self) -> int: ...


@dataclass
class Backpressure:
    high_water: int
    on_wait: Callable[[int], None] | None = None
    waited: float = 0.0


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

    The run's counters grow as messages go out (``enqueued`` jobs, ``reconciles`` batches), so a run is never
    seen finished while part of it is still unpublished.
    """
    for start in range(0, len(plan.jobs), JOB_CHUNK):
        backpressure.waited += wait_below(publisher.fetch_depth, backpressure.high_water, on_wait=backpressure.on_wait)
        chunk = plan.jobs[start : start + JOB_CHUNK]
        ledger.add(run_id, {"enqueued": len(chunk)})
        publisher.publish_jobs(chunk)
        if on_published:
            on_published(len(chunk))
    for start in range(0, len(plan.reconcile), RECONCILE_CHUNK):
        ledger.add(run_id, {"reconciles": 1}, global_too=False)
        publisher.publish_reconcile(plan.reconcile[start : start + RECONCILE_CHUNK], run_id)
    registry.settle(plan.settle)
