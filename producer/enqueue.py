"""Carrying out a sync plan: publish its jobs (with backpressure) and reconciles, then settle it.

Publishing is injected (``Publisher``), so this module knows nothing of Celery; the CLI and the event listener
pass the Celery-backed publisher from the gateway (:mod:`lookalike.app.gateway`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lookalike.producer.sync import SyncPlan
from lookalike.state.ledger import Ledger
from lookalike.state.messages import Job
from lookalike.state.queues import wait_below
from lookalike.state.registry import ProductRegistry

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

    The run's counters grow as messages go out (``enqueued`` jobs, ``reconciles`` batches), counted after each
    publish: a producer killed in between can leave a count short, never one that waits for jobs that do not
    exist. An ingest run is only finished once its status says everything was published.
    """
    for start in range(0, len(plan.jobs), JOB_CHUNK):
        backpressure.waited += wait_below(publisher.fetch_depth, backpressure.high_water, on_wait=backpressure.on_wait)
        chunk = plan.jobs[start : start + JOB_CHUNK]
        publisher.publish_jobs(chunk)
        ledger.add(run_id, {"enqueued": len(chunk)})
        if on_published:
            on_published(len(chunk))
    for start in range(0, len(plan.reconcile), RECONCILE_CHUNK):
        publisher.publish_reconcile(plan.reconcile[start : start + RECONCILE_CHUNK], run_id)
        ledger.add(run_id, {"reconciles": 1}, global_too=False)
    registry.settle(plan.settle)
