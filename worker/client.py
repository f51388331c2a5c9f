"""The sending side of the tasks: what producers and the CLI use to talk to workers through the broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from lookalike.state.messages import Job
from lookalike.state.queues import FETCH_QUEUE, queue_depth
from lookalike.state.search import SearchRequest


class CeleryPublisher:
    """Publishes jobs and reconciles over one broker connection (fast: no pool acquire per message)."""

    def __init__(self, app: Celery, redis_client: Any) -> None:
        self.app = app
        self.redis = redis_client

    def publish_jobs(self, jobs: Sequence[Job]) -> None:
        from lookalike.worker.tasks import fetch

        with self.app.producer_or_acquire() as producer:
            for job in jobs:
                fetch.apply_async(args=[job.to_message()], producer=producer, argsrepr=job.describe())

    def publish_reconcile(self, product_ids: Sequence[str], run_id: str) -> None:
        from lookalike.worker.tasks import reconcile

        reconcile.apply_async(
            args=[list(product_ids), run_id], argsrepr=f"[{len(product_ids)} products: {product_ids[0]} ...]"
        )

    def fetch_depth(self) -> int:
        return queue_depth(self.redis, FETCH_QUEUE)


def live_workers(app: Celery, timeout: float = 1.0) -> dict[str, list[str]]:
    """Worker node name -> the queues it consumes, for every worker that answers within ``timeout``."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {node: sorted(q["name"] for q in queues) for node, queues in replies.items()}


def send_query(app: Celery, request: SearchRequest) -> Any:
    """Submit a search; Flower shows its kind and size, never the image bytes."""
    from lookalike.worker.tasks import search

    return search.apply_async(args=[request.to_message()], argsrepr=request.describe())
