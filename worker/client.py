"""The sending side of the tasks: what producers, the CLI and the API use to talk to workers through the broker.

Tasks are sent by name (``send_task``), so nothing here imports the tasks module and with it the worker's heavy
parts (Pillow, requests, fastembed, the store engines): a process that only sends work stays light.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from celery import Celery

from lookalike.state.messages import Job
from lookalike.state.queues import FETCH_QUEUE, queue_depth
from lookalike.state.search import SearchRequest

# Task names, as the worker registers them (worker/tasks.py) and routes them (worker/app.py).
FETCH_TASK = "lookalike.fetch"
RECONCILE_TASK = "lookalike.reconcile"
ENCODE_TASK = "lookalike.encode"
SEARCH_TASK = "lookalike.search"
AUDIT_TASK = "lookalike.audit"
OPTIMIZE_TASK = "lookalike.optimize"
REINDEX_TASK = "lookalike.reindex"
SWITCH_TASK = "lookalike.switch"
DROP_TASK = "lookalike.drop"


class CeleryPublisher:
    """Publishes jobs and reconciles over one broker connection (fast: no pool acquire per message)."""

    def __init__(self, app: Celery, redis_client: Any) -> None:
        self.app = app
        self.redis = redis_client

    def publish_jobs(self, jobs: Sequence[Job]) -> None:
        with self.app.producer_or_acquire() as producer:
            for job in jobs:
                self.app.send_task(FETCH_TASK, args=[job.to_message()], producer=producer, argsrepr=job.describe())

    def publish_reconcile(self, product_ids: Sequence[str], run_id: str) -> None:
        self.app.send_task(
            RECONCILE_TASK,
            args=[list(product_ids), run_id],
            argsrepr=f"[{len(product_ids)} products: {product_ids[0]} ...]",
        )

    def fetch_depth(self) -> int:
        return queue_depth(self.redis, FETCH_QUEUE)


def live_workers(app: Celery, timeout: float = 1.0) -> dict[str, list[str]]:
    """Worker node name -> the queues it consumes, for every worker alive on ``app``'s broker (from the keys
    workers refresh, see :mod:`lookalike.state.presence`; ``timeout`` bounds the Redis call)."""
    import redis

    from lookalike.config.settings import get_settings
    from lookalike.state.presence import Presence

    client = redis.Redis.from_url(str(app.conf.broker_url), socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return Presence(client, get_settings().key_prefix).alive()
    finally:
        client.close()


def ask_workers(app: Celery, request: SearchRequest, *, timeout: float) -> dict[str, Any]:
    """A search through the workers, as data (``SearchResponse.to_data()`` or ``{"error", "detail"}``).

    The query's vector is computed on the embedding processes (``lookalike.encode``: the download of an image
    URL, the decode, the model), then the store owner searches with it (``lookalike.search``): it never downloads
    and never runs the model, so a slow or hostile image URL, or a burst of shoppers, cannot stall indexing or
    other queries. Raises Celery's TimeoutError when no answer comes within ``timeout`` seconds in all.
    """
    deadline = time.monotonic() + timeout
    vector = model = None
    if request.needs_vector:
        encoded = app.send_task(ENCODE_TASK, args=[request.to_message()], argsrepr=request.describe()).get(
            timeout=timeout
        )
        if "error" in encoded:
            return dict(encoded)
        vector, model = encoded["vector"], encoded.get("model")
        request = request.encoded_form()
    remaining = max(0.1, deadline - time.monotonic())
    answer = app.send_task(SEARCH_TASK, args=[request.to_message(), vector, model], argsrepr=request.describe())
    return dict(answer.get(timeout=remaining))


def audit_store(app: Celery, *, timeout: float, collection: str | None = None) -> dict[str, Any]:
    """The store owner's audit for `lookalike reconcile` (of the live collection, or the named one)."""
    return dict(app.send_task(AUDIT_TASK, args=[collection]).get(timeout=timeout))


def switch_store(app: Celery, collection: str, *, timeout: float) -> dict[str, Any]:
    """Ask the store owner to make ``collection`` the live one."""
    return dict(app.send_task(SWITCH_TASK, args=[collection]).get(timeout=timeout))


def drop_collection(app: Celery, collection: str, *, timeout: float) -> dict[str, Any]:
    """Ask the store owner to delete a collection that is not live."""
    return dict(app.send_task(DROP_TASK, args=[collection]).get(timeout=timeout))


def reindex_store(app: Celery, *, timeout: float) -> dict[str, Any]:
    """The store owner's upgrade of the live collection to the current layout."""
    return dict(app.send_task(REINDEX_TASK).get(timeout=timeout))


def optimize_store(app: Celery) -> None:
    """Ask the store owner to build its search index now (after a large ingest, while nobody waits)."""
    app.send_task(OPTIMIZE_TASK)
