"""The sending side of the tasks: what producers, the CLI and the API use to talk to workers through the broker.

Tasks are sent by name (``send_task``), so nothing here imports the tasks module and with it the worker's heavy
parts (Pillow, requests, fastembed, the store engines): a process that only sends work stays light.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery import Celery, chain

from lookalike.state.messages import Job
from lookalike.state.queues import FETCH_QUEUE, queue_depth
from lookalike.state.search import SearchRequest

if TYPE_CHECKING:
    from lookalike.worker.prepare import QueryPreparer

# Task names, as the worker registers them (worker/tasks.py) and routes them (worker/app.py).
FETCH_TASK = "lookalike.fetch"
RECONCILE_TASK = "lookalike.reconcile"
ENCODE_TASK = "lookalike.encode"
SEARCH_TASK = "lookalike.search"
SEARCH_ENCODED_TASK = "lookalike.search_encoded"
AUDIT_TASK = "lookalike.audit"
OPTIMIZE_TASK = "lookalike.optimize"
REINDEX_TASK = "lookalike.reindex"


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


def ask_workers(
    app: Celery, request: SearchRequest, *, timeout: float, preparer: QueryPreparer | None = None
) -> dict[str, Any]:
    """A search through the workers, as data (``SearchResponse.to_data()`` or ``{"error", "detail"}``).

    An image (upload or URL) is first reduced here to the model's input by ``preparer`` (this process's own by
    default, see :mod:`lookalike.worker.prepare`), so only a 224x224 JPEG crosses the broker. A query that
    needs a vector is then sent as one chain, ``lookalike.encode | lookalike.search_encoded``: the shoppers'
    encode processes embed it and hand the vector to the store owner's search themselves, so this process sends
    one message and waits on one result. The store owner never downloads and never runs the model. Every task
    carries ``expires`` at this process's deadline: a worker that reaches it later drops it instead of working
    for nobody.

    Raises Celery's TimeoutError when no answer comes within ``timeout`` seconds in all, and
    :class:`~lookalike.state.search.QueryRejected` when the image cannot be prepared.
    """
    from lookalike.worker.prepare import process_preparer

    deadline = time.monotonic() + timeout
    request = (preparer or process_preparer()).prepare(request)
    expires = (datetime.now(UTC) + timedelta(seconds=timeout)).isoformat()
    if request.needs_vector:
        searched = request.encoded_form()
        flow = chain(
            app.signature(ENCODE_TASK, args=[request.to_message()], options={"expires": expires}),
            app.signature(SEARCH_ENCODED_TASK, args=[searched.to_message()], options={"expires": expires}),
        )
        answer = flow.apply_async(argsrepr=request.describe())
    else:
        answer = app.send_task(SEARCH_TASK, args=[request.to_message()], argsrepr=request.describe(), expires=expires)
    return dict(answer.get(timeout=max(0.1, deadline - time.monotonic())))


def audit_store(app: Celery, *, timeout: float) -> dict[str, Any]:
    """The store owner's audit for `lookalike reconcile`."""
    return dict(app.send_task(AUDIT_TASK).get(timeout=timeout))


def reindex_store(app: Celery, *, timeout: float) -> dict[str, Any]:
    """The store owner's upgrade of the live collection to the current layout."""
    return dict(app.send_task(REINDEX_TASK).get(timeout=timeout))


def optimize_store(app: Celery) -> None:
    """Ask the store owner to build its search index now (after a large ingest, while nobody waits)."""
    app.send_task(OPTIMIZE_TASK)
