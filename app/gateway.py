"""The one way a request reaches the store owner and the embedding processes, decided here and nowhere else.

A search, a "more like this", the store audit of `lookalike reconcile` and `lookalike reindex` all need the
store, and some need the model. Where they run is one rule (:meth:`Gateway.route`):

- through the broker, when live workers consume every queue the request needs (the store owner on
  ``lookalike.query`` / ``lookalike.index``; the embedding processes on ``lookalike.encode`` for a query's
  vector): this process never loads the model or opens the store;
- in this process, when no worker runs at all: it loads the model and opens the store itself, one request at
  a time, and closes the store afterwards so a worker started later can take it over;
- otherwise (workers run, but none consumes a needed queue) a :class:`BackendUnavailable` that names the
  missing queue and the command that starts a worker for it.

The CLI and the API both hold a :class:`Gateway` (the API's ``SearchBackend`` is one), so they route alike.
Shoppers' queries are decided here too: a photo or an image URL is reduced to the model's input in this process
before anything is sent (:mod:`lookalike.worker.prepare`: no multi-megabyte message crosses Redis, and a slow URL
holds a thread here, never a worker); a query is one chain that expires when this process stops waiting
(:func:`ask_workers`); and at most ``LOOKALIKE_API_MAX_SEARCHES`` searches are admitted at once
(:meth:`Gateway.admit`, :mod:`lookalike.app.admission`). This is also the only module that sends a task (by
name, from :mod:`lookalike.state.tasks`): it never imports the tasks module, so a process that only sends work
stays light.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from lookalike.config.settings import Settings
from lookalike.state.brokerfull import as_broker_full, out_of_memory
from lookalike.state.errors import BackendTimeout, BackendUnavailable, BrokerUnreachable, StoreError, Unavailable
from lookalike.state.messages import Job, describe_jobs
from lookalike.state.queues import ENCODE_QUEUE, FETCH_QUEUE, INDEX_QUEUE, QUERY_QUEUE, queue_depth
from lookalike.state.search import QueryRejected, SearchRequest
from lookalike.state.tasks import (
    AUDIT_TASK,
    DROP_TASK,
    DUPLICATES_SCAN_TASK,
    ENCODE_TASK,
    FETCH_BATCH_TASK,
    FETCH_TASK,
    OPTIMIZE_TASK,
    RECONCILE_TASK,
    REINDEX_TASK,
    SEARCH_ENCODED_TASK,
    SEARCH_TASK,
    SWITCH_TASK,
)

if TYPE_CHECKING:
    from celery import Celery

    from lookalike.app.admission import Admission
    from lookalike.state.replies import Replies
    from lookalike.worker.pipeline import WorkerContext
    from lookalike.worker.prepare import QueryPreparer

log = logging.getLogger("lookalike.app")

T = TypeVar("T")
Note = Callable[[str], None]

# Who consumes a queue and how to start one, for the message that says it is missing.
QUEUE_ROLES = {
    QUERY_QUEUE: ("the store owner", "query,index"),
    INDEX_QUEUE: ("the store owner", "query,index"),
    ENCODE_QUEUE: ("the shoppers' encode processes", "encode"),
}


def _missing(queue: str) -> str:
    role, queues = QUEUE_ROLES.get(queue, ("a worker", queue))
    return f"no running worker consumes {queue} ({role}); start one with `lookalike worker --queues {queues}`"


class Gateway:
    """Routes requests to the workers or this process (see the module docstring), for one broker.

    ``note`` is told, once, that requests are answered in this process; ``workers_max_age`` lets a busy caller
    (the API) reuse a reading of the live workers that is that many seconds old instead of reading Redis for
    every request.
    """

    def __init__(self, settings: Settings, *, note: Note | None = None, workers_max_age: float = 0.0) -> None:
        self.settings = settings
        self._note = note or log.warning
        self._workers_max_age = workers_max_age
        self._in_process_lock = threading.Lock()
        self._said_in_process = False
        self._consumed_cache: tuple[float, set[str] | None] = (0.0, None)

    @cached_property
    def preparer(self) -> QueryPreparer:
        """Shoppers' photos and image URLs -> the model's input, in this process (their own URL policy)."""
        from lookalike.worker.prepare import QueryPreparer

        return QueryPreparer(self.settings)

    @cached_property
    def admission(self) -> Admission:
        from lookalike.app.admission import Admission

        return Admission(self.settings.effective_api_max_searches)

    def admit(self) -> AbstractContextManager[None]:
        """One search in flight while the block runs; :class:`~lookalike.state.errors.Overloaded` at once past
        ``LOOKALIKE_API_MAX_SEARCHES``."""
        return self.admission.admit()

    def reduce_upload(self, file: BinaryIO) -> bytes:
        """An uploaded photo, read from its spool file once a decode slot is free, as the transport JPEG."""
        return self.preparer.reduce_upload(file)

    @cached_property
    def replies(self) -> Replies:
        """Where the store owner hands this process its queries' answers (one client, shared by its threads)."""
        from lookalike.state.connection import redis_client
        from lookalike.state.replies import Replies

        return Replies(redis_client(self.settings), self.settings.key_prefix)

    @cached_property
    def celery(self) -> Celery:
        """A Celery app on this gateway's broker (from its settings, never from the environment)."""
        from lookalike.worker.app import create_app

        return create_app(self.settings)

    # ------------------------------------------------------------------------------------------- routing
    def live_workers(self, timeout: float = 1.0) -> dict[str, list[str]]:
        return live_workers(self.celery, timeout, prefix=self.settings.key_prefix)

    def consumed(self, *, max_age: float = 0.0) -> set[str] | None:
        """The queues live workers consume (None: no worker at all); a reading up to ``max_age`` seconds old is
        reused."""
        read_at, consumed = self._consumed_cache
        if max_age and time.monotonic() - read_at < max_age:
            return consumed
        import redis

        try:
            workers = self.live_workers()
        except redis.RedisError as exc:
            raise BrokerUnreachable(f"no broker answers (LOOKALIKE_BROKER_URL): {exc}") from exc
        consumed = {queue for queues in workers.values() for queue in queues} if workers else None
        self._consumed_cache = (time.monotonic(), consumed)
        return consumed

    def route(self, queues: Sequence[str], doing: str) -> bool:
        """True: send the request through the broker; False: run it in this process (no worker at all).

        Raises :class:`BackendUnavailable` when workers run but none consumes one of ``queues``. A reading up to
        ``workers_max_age`` old decides only the usual case (every queue consumed); a refusal or running here is
        decided on a fresh one, so a worker that just stopped or started is not taken for the old picture.
        """
        consumed = self.consumed(max_age=self._workers_max_age)
        if consumed is None or not set(queues) <= consumed:
            consumed = self.consumed()
        if consumed is None:
            if not self._said_in_process:
                self._note(f"no worker is running: {doing} in this process")
                self._said_in_process = True
            return False
        for queue in queues:
            if queue not in consumed:
                raise BackendUnavailable(_missing(queue))
        return True

    def in_process(self, work: Callable[[WorkerContext], T]) -> T:
        """``work`` on a worker context of this process, one at a time; the store is closed afterwards (a worker
        started later can take it over). A store error is an outage to the caller."""
        from lookalike.worker.pipeline import WorkerContext

        with self._in_process_lock:
            ctx = WorkerContext(self.settings)
            try:
                return work(ctx)
            except StoreError as exc:
                if isinstance(exc, Unavailable):
                    raise
                raise BackendUnavailable(str(exc)) from exc
            finally:
                ctx.close()
                ctx.redis.close()

    def _wait(self, what: str, queue: str, send: Callable[[], T], timeout: float) -> T:
        """A request sent through the broker, its broker failures and its timeout turned into outages."""
        import kombu.exceptions
        import redis
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            return send()
        except CeleryTimeout as exc:
            raise BackendTimeout(
                f"no worker answered {what} within {timeout:g}s; is the worker on {queue} busy or stuck?"
            ) from exc
        except (redis.RedisError, kombu.exceptions.OperationalError, ConnectionError) as exc:
            raise BackendUnavailable(f"the broker failed: {exc}") from exc

    # ------------------------------------------------------------------------------------------ queries
    def search(self, request: SearchRequest, *, timeout: float | None = None) -> dict[str, Any]:
        """The answer to ``request`` as data (``SearchResponse.to_data()``), best first.

        The request is validated here, once, whoever built it. Raises :class:`QueryRejected` (the query cannot
        be answered as asked) or an :class:`~lookalike.state.errors.Unavailable` (nobody can answer it now;
        :class:`BackendTimeout` when it was sent and nothing came back in time).
        """
        request.validate(max_image_bytes=self.settings.query_max_bytes)
        timeout = timeout or self.settings.query_timeout
        request = self.preparer.prepare(request)  # here, whoever answers: downloaded and reduced in this process
        needs = (QUERY_QUEUE, ENCODE_QUEUE) if request.needs_vector else (QUERY_QUEUE,)
        if not self.route(needs, "answering"):
            from lookalike.worker.pipeline import answer_query

            return self.in_process(lambda ctx: answer_query(ctx, request).to_data())
        answer = self._wait(
            "the query",
            QUERY_QUEUE,
            lambda: ask_workers(self.celery, request, timeout=timeout, replies=self.replies),
            timeout,
        )
        if answer.get("error") == "store_error":
            raise BackendUnavailable(str(answer.get("detail") or "the store failed"))
        if "error" in answer:
            raise QueryRejected(str(answer["error"]), str(answer.get("detail") or ""))
        return answer

    def readiness(self) -> dict[str, bool]:
        """Which parts answer now (for /readyz): the broker, the store owner, the embedding processes."""
        from lookalike.app.broker import redis_answers

        if not redis_answers(self.settings.broker_url.get_secret_value(), timeout=0.5):
            return {"broker": False, "store": False, "query_worker": False}
        consumed = self.consumed() or set()
        return {
            "broker": True,
            "store": QUERY_QUEUE in consumed and INDEX_QUEUE in consumed,
            "query_worker": ENCODE_QUEUE in consumed,
        }

    # --------------------------------------------------------------------------------- the store owner
    def audit(
        self, *, timeout: float, collection: str | None = None, watch: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """The store (the live collection, or the named one: a reindex's shadow) checked against the registry by
        whoever owns the store: orphan points deleted, payloads brought up to date, registered images with no
        point listed (``AuditReport.to_data()``). ``watch`` is asked every few seconds while it waits (a
        watchdog, see :mod:`lookalike.state.waiting`)."""
        if not self.route((INDEX_QUEUE,), "auditing the store"):
            from lookalike.worker.pipeline import audit_stage

            return self.in_process(lambda ctx: audit_stage(ctx, collection=collection).to_data())
        return self._wait(
            "the audit", INDEX_QUEUE, lambda: self._ask(AUDIT_TASK, timeout, collection, watch=watch), timeout
        )

    def switch(self, collection: str, *, timeout: float) -> dict[str, Any]:
        """Make ``collection`` the live one, by whoever owns the store (`lookalike reindex --model`)."""
        if not self.route((INDEX_QUEUE,), "switching the live collection"):
            from lookalike.worker.pipeline import switch_stage

            return self.in_process(lambda ctx: switch_stage(ctx, collection))
        return self._wait("the switch", INDEX_QUEUE, lambda: self._ask(SWITCH_TASK, timeout, collection), timeout)

    def drop(self, collection: str, *, timeout: float) -> dict[str, Any]:
        """Delete a collection that is not the live one, by whoever owns the store (`reindex --drop-old`)."""
        if not self.route((INDEX_QUEUE,), "dropping a collection"):
            from lookalike.worker.pipeline import drop_stage

            return self.in_process(lambda ctx: drop_stage(ctx, collection))
        return self._wait("the drop", INDEX_QUEUE, lambda: self._ask(DROP_TASK, timeout, collection), timeout)

    def reindex(self, *, timeout: float, watch: Callable[[], None] | None = None) -> dict[str, Any]:
        """The live collection upgraded to the current layout by whoever owns the store."""
        if not self.route((INDEX_QUEUE,), "reindexing"):
            from lookalike.worker.pipeline import reindex_stage

            return self.in_process(reindex_stage)
        return self._wait("the reindex", INDEX_QUEUE, lambda: self._ask(REINDEX_TASK, timeout, watch=watch), timeout)

    def duplicates_scan_page(self, *, restart: bool, page: int, timeout: float) -> dict[str, Any]:
        """One page of `lookalike duplicates scan` by whoever owns the store; the scan's state after it."""
        if not self.route((INDEX_QUEUE,), "scanning for duplicates"):
            from lookalike.worker.duplicates import scan_stage

            return self.in_process(lambda ctx: scan_stage(ctx, restart=restart, page=page))

        def send() -> dict[str, Any]:
            sent = self.celery.send_task(DUPLICATES_SCAN_TASK, kwargs={"restart": restart, "page": page})
            return dict(sent.get(timeout=timeout))

        return self._wait("a duplicate scan page", INDEX_QUEUE, send, timeout)

    def optimize(self) -> None:
        """Ask the store owner to build its search index now (after a large ingest, while nobody waits)."""
        self.celery.send_task(OPTIMIZE_TASK)

    def _ask(self, task: str, timeout: float, *args: Any, watch: Callable[[], None] | None = None) -> dict[str, Any]:
        return dict(await_result(self.celery.send_task(task, args=list(args)), timeout=timeout, watch=watch))

    def conditions(self) -> list[str]:
        """What stops indexing now (the store's disk is full, a pool stopped, the broker is full), one line
        each, as `lookalike status` says it; /readyz names them."""
        from lookalike.state.conditions import Conditions
        from lookalike.state.connection import redis_client

        client = redis_client(self.settings)
        try:
            return [str(c["message"]) for c in Conditions(client, self.settings.key_prefix).active()]
        finally:
            client.close()

    # ----------------------------------------------------------------------------------------- ingest
    def publisher(self, redis_client: Any) -> CeleryPublisher:
        """What the producer publishes jobs and reconciles with (always through the broker: they are queued)."""
        return CeleryPublisher(self.celery, redis_client, batch=self.settings.fetch_batch)


class CeleryPublisher:
    """Publishes jobs and reconciles over one broker connection (fast: no pool acquire per message).

    Jobs go out ``batch`` to a message (``LOOKALIKE_FETCH_BATCH``): per message, Celery and the broker cost a
    fetch worker about as much CPU as a small image's decode (a pop, an unacknowledged record, three task events,
    an acknowledgement), so a message per image was most of the pipeline's own cost with a fast model."""

    def __init__(self, app: Celery, redis_client: Any, *, batch: int = 1) -> None:
        self.app = app
        self.redis = redis_client
        self.batch = max(1, batch)

    def publish_jobs(self, jobs: Sequence[Job]) -> None:
        """Publish every job, in order; a broker out of memory raises
        :class:`~lookalike.state.brokerfull.BrokerOutOfMemory` saying how many went out before it refused."""
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for start in range(0, len(jobs), self.batch):
                    chunk = jobs[start : start + self.batch]
                    if len(chunk) == 1:
                        job = chunk[0]
                        self.app.send_task(
                            FETCH_TASK, args=[job.to_message()], producer=producer, argsrepr=job.describe()
                        )
                    else:
                        self.app.send_task(
                            FETCH_BATCH_TASK,
                            args=[[job.to_message() for job in chunk]],
                            producer=producer,
                            argsrepr=describe_jobs(chunk),
                        )
                    sent += len(chunk)
        except Exception as exc:
            if out_of_memory(exc):
                raise as_broker_full(exc, self.redis, published=sent) from exc
            raise

    def publish_reconcile(self, product_ids: Sequence[str], run_id: str) -> None:
        self.app.send_task(
            RECONCILE_TASK,
            args=[list(product_ids), run_id],
            argsrepr=f"[{len(product_ids)} products: {product_ids[0]} ...]",
        )

    def fetch_depth(self) -> int:
        """Jobs waiting in the fetch queue, counting each message as a full batch (an upper bound)."""
        return queue_depth(self.redis, FETCH_QUEUE) * self.batch


# How often a command waiting for a task's result asks whether anyone still works for it.
WATCH_EVERY = 2.0


def await_result(result: Any, *, timeout: float, watch: Callable[[], None] | None = None) -> Any:
    """``result.get(timeout)``, asking ``watch`` every few seconds meanwhile (a watchdog that gives up when no
    live worker consumes the task's queue, see :mod:`lookalike.state.waiting`)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            return result.get(timeout=max(0.1, min(WATCH_EVERY, remaining)))
        except CeleryTimeout:
            if remaining <= WATCH_EVERY:
                raise
            if watch is not None:
                watch()


def live_workers(app: Celery, timeout: float = 1.0, *, prefix: str | None = None) -> dict[str, list[str]]:
    """Worker node name -> the queues it consumes, for every worker alive on ``app``'s broker (from the keys
    workers refresh, see :mod:`lookalike.state.presence`; ``timeout`` bounds the Redis call). ``prefix`` is
    the key prefix (default: the settings')."""
    import redis

    from lookalike.state.presence import Presence

    if prefix is None:
        from lookalike.config.settings import get_settings

        prefix = get_settings().key_prefix
    client = redis.Redis.from_url(str(app.conf.broker_url), socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return Presence(client, prefix).alive()
    finally:
        client.close()


def ask_workers(app: Celery, request: SearchRequest, *, timeout: float, replies: Replies) -> dict[str, Any]:
    """A search through the workers, as data (``SearchResponse.to_data()`` or ``{"error", "detail"}``).

    A query that needs a vector is sent as one chain, ``lookalike.encode | lookalike.search_encoded``: the
    shoppers' encode processes embed it and hand the vector to the store owner's search themselves, so this
    process sends one message and waits on one answer, which the store owner pushes to a list of this query's
    own (``replies``, :mod:`lookalike.state.replies`; Celery stores no result). The store owner never downloads
    and never runs the model. An image must be prepared already (the transport JPEG, :meth:`QueryPreparer.prepare
    <lookalike.worker.prepare.QueryPreparer.prepare>`): the encode processes never download nor take a
    full-size photo. Every task carries ``expires`` at this process's deadline: a worker that reaches it later
    drops it instead of working for nobody. Raises Celery's TimeoutError when no answer comes within ``timeout``
    seconds in all.
    """
    from celery import chain
    from celery.exceptions import TimeoutError as CeleryTimeout

    deadline = time.monotonic() + timeout
    expires = (datetime.now(UTC) + timedelta(seconds=timeout)).isoformat()
    options = {"expires": expires, "ignore_result": True}
    reply = replies.new_key()
    if request.needs_vector:
        chain(
            app.signature(ENCODE_TASK, args=[request.to_message()], options=options),
            app.signature(
                SEARCH_ENCODED_TASK,
                args=[request.encoded_form().to_message()],
                kwargs={"reply": reply},
                options=options,
            ),
        ).apply_async(argsrepr=request.describe())
    else:
        app.send_task(
            SEARCH_TASK, args=[request.to_message()], kwargs={"reply": reply}, argsrepr=request.describe(), **options
        )
    answer = replies.wait(reply, max(0.1, deadline - time.monotonic()))
    if answer is None:
        raise CeleryTimeout(f"no answer within {timeout:g}s")
    return answer
