"""Thin Celery tasks over the pipeline stages: parse the message, call a plain function, return JSON.

How a message ends (acks_late throughout, so a message is removed only when one of these happens):

* a fetch batch (``fetch_batch``: the producer's LOOKALIKE_FETCH_BATCH jobs in one message) ends when each of
  its jobs has ended on its own: sent on to the embedding stage, failed for a known reason, or handed to the
  single-job ``fetch`` task as a message of its own for a transient error (the first retry of the policy
  below, the later ones on that message). A batch handed back is split into one ``fetch`` message per job,
  so deliveries are counted per job (see below) and a job that kills its process fails alone;

* done, or failed for a known reason - the failure is recorded (dead-letter list, counters) and the message
  is acknowledged;
* a transient error (download 5xx/429/timeouts, store unreachable) - Celery's own ``retry`` with its
  exponential backoff and full jitter (``get_exponential_backoff_interval``, what ``retry_backoff`` uses)
  until the retries run out, then recorded as failed. The retry is written in the task rather than with
  ``autoretry_for`` so that running out of retries records the failure instead of raising;
* Redis itself unreachable (broker restart, network) - the message is rejected with requeue, or, if even
  that cannot reach Redis, stays unacknowledged and comes back after the visibility timeout. It is never
  recorded as failed: the image did nothing wrong;
* a resource runs out: the store's disk (short of ``LOOKALIKE_STORE_MIN_FREE_BYTES``) or the broker's memory
  (Redis at maxmemory answers "OOM") - the message waits a moment and goes back to its queue, uncounted as a
  delivery and never failed; the condition is logged once a minute (lookalike.worker.diskspace,
  lookalike.state.brokerfull);
* the worker process dies (SIGKILL, OOM, segfault) - ``task_reject_on_worker_lost`` puts it back; a message
  that comes back more than ``MAX_DELIVERIES`` times is recorded as failed rather than looping forever, and an
  embedding batch that comes back is split into one message per image, so one image that crashes the model
  process does not take its batch-mates down with it;
* anything unexpected (a bug) - ``on_failure`` records each job as failed with ``internal_<Error>``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import kombu.exceptions
import redis
from celery import Task, signals
from celery.exceptions import Reject, Retry
from celery.utils.time import get_exponential_backoff_interval

from lookalike.config.settings import get_settings
from lookalike.state.brokerfull import BrokerOutOfMemory, as_broker_full, out_of_memory, wait_for_room
from lookalike.state.errors import EMBED, FETCH, INDEX, TASK, ModelUnavailable, Rejected, StoreError, StoreUnavailable
from lookalike.state.messages import (
    EmbeddedPoint,
    Job,
    PreparedImage,
    decode_vector,
    describe_batch,
    encode_vector,
    jobs_in,
)
from lookalike.state.presence import Presence
from lookalike.state.process import process_cache
from lookalike.state.queues import EMBED_QUEUE, ENCODE_QUEUE, INDEX_QUEUE, QUERY_QUEUE, queue_depth, wait_below
from lookalike.state.replies import send_reply
from lookalike.state.search import QueryRejected, SearchRequest
from lookalike.state.tasks import (
    AUDIT_TASK,
    DROP_TASK,
    DUPLICATES_SCAN_TASK,
    EMBED_TASK,
    ENCODE_TASK,
    FETCH_BATCH_TASK,
    FETCH_TASK,
    INDEX_TASK,
    OPTIMIZE_TASK,
    RECONCILE_TASK,
    REINDEX_TASK,
    SEARCH_ENCODED_TASK,
    SEARCH_TASK,
    SWITCH_TASK,
)
from lookalike.worker import pipeline
from lookalike.worker.app import app
from lookalike.worker.batcher import Batcher
from lookalike.worker.diskspace import StoreDiskFull
from lookalike.worker.embed import model_dimension
from lookalike.worker.logs import configure_logging
from lookalike.worker.query import KeywordFallback

log = logging.getLogger(__name__)

MAX_DELIVERIES = 5
# Messages put back to wait for a resource rather than failed: their guard logs the condition once a minute.
WAITING_FOR_RESOURCES: tuple[type[BaseException], ...] = (StoreDiskFull, BrokerOutOfMemory)
# How long a task that met a broker out of memory waits for room before handing its message back (pushing it
# back needs room too; a refused push leaves it unacknowledged, and it returns after the visibility timeout).
BROKER_FULL_PAUSE = 30.0
_broker_full_logged = [0.0]
INFRASTRUCTURE_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    kombu.exceptions.OperationalError,
    ConnectionError,
)


class _QuietWhileWaiting(logging.Filter):
    """Celery logs every rejected message at WARNING with its traceback; a batch put back to wait for disk
    space would then log once every few seconds. Its guard logs the condition once a minute instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, Reject) and isinstance(exc.reason, WAITING_FOR_RESOURCES))


logging.getLogger("celery.app.trace").addFilter(_QuietWhileWaiting())


class RecordingTask(Task):
    """A task whose unexpected failure is recorded for each of its jobs (dead-letter list and counters)."""

    stage = TASK

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        jobs = jobs_in(args[0]) if args else []
        if out_of_memory(exc):  # the broker was full, not the image at fault: never failed for good
            log.error(
                "the broker is out of memory: %d job(s) of task %s not recorded as failed (`lookalike reconcile`)",
                len(jobs),
                task_id,
            )
            return
        try:
            pipeline.fail_jobs(pipeline.current_context(), jobs, self.stage, f"internal_{type(exc).__name__}", str(exc))
        except Exception:
            log.exception("could not record the failure of %d job(s) of task %s", len(jobs), task_id)


class FetchTask(RecordingTask):
    stage = FETCH


class EmbedTask(RecordingTask):
    stage = EMBED


class IndexTask(RecordingTask):
    stage = INDEX


@contextmanager
def redelivered_on_infrastructure_errors() -> Iterator[None]:
    """Redis unreachable: hand the message back instead of failing it (see the module docstring)."""
    try:
        yield
    except (Retry, Reject):
        raise
    except INFRASTRUCTURE_ERRORS as exc:
        if out_of_memory(exc):
            _hand_back_when_broker_has_room(exc)
        log.warning("Redis unreachable (%s): the message goes back to its queue", exc)
        time.sleep(1.0)  # not a hot loop while Redis restarts
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        if out_of_memory(exc):
            _hand_back_when_broker_has_room(exc)
        raise


def _hand_back_when_broker_has_room(exc: BaseException) -> None:
    """Redis answered "out of memory": like an outage, the message goes back and nothing is failed. It waits
    for room first (its push back needs some), and says so once a minute, not once a message."""
    ctx = pipeline.current_context()
    full = as_broker_full(exc, ctx.redis)
    now = time.monotonic()
    if now - _broker_full_logged[0] >= 60.0:
        log.error("%s: messages go back to their queues until it has room", full)
        _broker_full_logged[0] = now
    wait_for_room(ctx.redis, BROKER_FULL_PAUSE)
    raise Reject(full, requeue=True) from exc


def handed_back(task: Task) -> bool:
    """The message was delivered before and not acknowledged (its worker died, or it was requeued)."""
    return bool((task.request.delivery_info or {}).get("redelivered"))


def too_many_deliveries(task: Task, stage: str, jobs: Sequence[Job]) -> bool:
    """True (and the jobs recorded as failed) when this message keeps coming back (it kills its worker).

    Only messages that were handed back (kombu marks them redelivered) are counted, so the normal path costs
    no Redis round trip.
    """
    if not handed_back(task):
        return False
    ctx = pipeline.current_context()
    deliveries = ctx.ledger.count_delivery(task.request.id, task.request.retries)
    if deliveries <= MAX_DELIVERIES:
        return False
    pipeline.fail_jobs(ctx, jobs, stage, "redelivered_too_often", f"handed back {deliveries} times")
    return True


def retry_or_fail(
    task: Task,
    exc: Exception,
    jobs: Sequence[Job],
    *,
    stage: str,
    reason: str,
    detail: str,
    retries: int,
    backoff_max: float,
    at_least: float | None = None,
) -> None:
    """The one retry policy: retry with exponential backoff and full jitter while ``retries`` allow, never
    sooner than ``at_least`` (a server's Retry-After) and never later than ``backoff_max`` (a retry waits in its
    worker unacknowledged, and must come well inside the visibility timeout); then record the jobs as failed.

    The limits are passed at run time (read from the settings then), so the app reads no settings at import.
    """
    if task.request.retries < retries:
        countdown = backoff(task.request.retries, backoff_max, at_least)
        raise task.retry(exc=exc, countdown=countdown, max_retries=retries)
    pipeline.fail_jobs(pipeline.current_context(), jobs, stage, reason, detail)


def backoff(retries: int, backoff_max: float, at_least: float | None = None) -> float:
    """Seconds before retry number ``retries + 1``: exponential with full jitter, within the limits above."""
    countdown = get_exponential_backoff_interval(factor=1, retries=retries, maximum=int(backoff_max), full_jitter=True)
    return min(backoff_max, max(countdown, at_least or 0))


# ------------------------------------------------------------------------------------------------- fetch
def _send_embed_batch(items: list[PreparedImage]) -> None:
    ctx = pipeline.current_context()
    # Batches waiting to be embedded, or to be written (a store that waits for disk space): either way, stop
    # downloading more, so that Redis holds a bounded number of batches however long the store waits.
    wait_below(
        lambda: max(queue_depth(ctx.redis, EMBED_QUEUE), queue_depth(ctx.redis, INDEX_QUEUE)),
        ctx.settings.embed_high_water,
    )
    embed.apply_async(args=[[item.to_message() for item in items]], argsrepr=describe_batch(items, "images"))


def _fetch_batcher() -> Batcher:
    settings = pipeline.current_context().settings
    return process_cache.get(
        "fetch-batcher",
        lambda: Batcher(_send_embed_batch, settings.batch_size, settings.batch_linger, settings.batch_max_linger),
    )


def _fetch_threads() -> ThreadPoolExecutor:
    """The process's download threads (LOOKALIKE_FETCH_CONCURRENCY), shared by every batch it runs."""
    settings = pipeline.current_context().settings
    return process_cache.get(
        "fetch-threads", lambda: ThreadPoolExecutor(settings.fetch_concurrency, thread_name_prefix="download")
    )


@app.task(name=FETCH_BATCH_TASK, base=FetchTask, bind=True)
def fetch_batch(self: Task, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of jobs, downloaded concurrently; acknowledged once every job in it was sent on, retried as its own
    message (``fetch``, same backoff) or failed. A batch handed back is split into one ``fetch`` message per job,
    so deliveries are counted per job and a job that kills its process fails alone (see the module docstring)."""
    parsed = [Job.from_message(job) for job in jobs]
    with redelivered_on_infrastructure_errors():
        if handed_back(self):
            for job in parsed:
                fetch.apply_async(args=[job.to_message()], argsrepr=job.describe())
            return {"split": len(parsed)}
        ctx = pipeline.current_context()
        outcomes = list(_fetch_threads().map(lambda job: _fetch_one(ctx, job), parsed))
    return {"outcomes": dict(Counter(outcomes))}


def _fetch_one(ctx: pipeline.WorkerContext, job: Job) -> str:
    """One job of a batch: sent on, retried alone (the first retry of ``fetch``'s policy) or failed alone."""
    try:
        item = pipeline.fetch_stage(ctx, job)
    except Rejected as exc:
        if exc.transient and ctx.settings.fetch_retries > 0:
            countdown = backoff(0, ctx.settings.fetch_backoff_max, getattr(exc, "retry_after", None))
            fetch.apply_async(args=[job.to_message()], countdown=countdown, retries=1, argsrepr=job.describe())
            return "retried"
        pipeline.fail_jobs(ctx, [job], exc.stage, exc.reason, exc.detail)
        return "failed"
    except Exception as exc:
        if isinstance(exc, INFRASTRUCTURE_ERRORS) or out_of_memory(exc):
            raise  # Redis away or full: the whole batch goes back (see above), nothing failed; re-runs are idempotent
        # A bug met by one job fails that job, not its batch-mates (some already sent on).
        log.exception("fetching %s failed unexpectedly", job.image_url)
        pipeline.fail_jobs(ctx, [job], FETCH, f"internal_{type(exc).__name__}", str(exc))
        return "failed"
    _fetch_batcher().submit(item)
    return "sent_to_embed"


@app.task(name=FETCH_TASK, base=FetchTask, bind=True)
def fetch(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    parsed = Job.from_message(job)
    with redelivered_on_infrastructure_errors():
        ctx = pipeline.current_context()
        if too_many_deliveries(self, FETCH, [parsed]):
            return {"outcome": "failed", "reason": "redelivered_too_often"}
        try:
            item = pipeline.fetch_stage(ctx, parsed)
        except Rejected as exc:
            if exc.transient:
                retry_or_fail(
                    self,
                    exc,
                    [parsed],
                    stage=exc.stage,
                    reason=exc.reason,
                    detail=exc.detail,
                    retries=ctx.settings.fetch_retries,
                    backoff_max=ctx.settings.fetch_backoff_max,
                    at_least=getattr(exc, "retry_after", None),
                )
            else:
                pipeline.fail_jobs(ctx, [parsed], exc.stage, exc.reason, exc.detail)
            return {"outcome": "failed", "reason": exc.reason}
        _fetch_batcher().submit(item)
    return {"outcome": "sent_to_embed", "cached": item.cached}


# ------------------------------------------------------------------------------------------------- embed
# A batch whose images would take this process longer than this to embed is shared when no other batch waits in
# the embed queue (the end of a run, a lull in the downloads): its second half goes back to the queue for an idle
# sibling process, instead of one process working through all of it while the others wait. Below it (a small
# model, a small batch) nothing is checked: no broker round trip.
SHARE_ABOVE_SECONDS = 0.5


def share_point(images: int, seconds_per_image: float, others_waiting: bool) -> int:
    """How many of a batch's ``images`` (those to embed) this process keeps: all of them, or the first half when
    they would take over :data:`SHARE_ABOVE_SECONDS` and no other batch waits for a process."""
    if images < 2 or others_waiting or images * seconds_per_image <= SHARE_ABOVE_SECONDS:
        return images
    return (images + 1) // 2


def _share_with_idle_siblings(ctx: pipeline.WorkerContext, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The part of the batch this process embeds; the rest, if any, sent back to the embed queue as its own
    message (see :data:`SHARE_ABOVE_SECONDS`). The embedder's own average is the cost estimate (none before its
    first batch: kept whole)."""
    model = ctx.embedder
    per_image = model.seconds / model.items if model.items else 0.0
    to_embed = [item for item in items if not item.get("vector")]
    if len(to_embed) < 2 or len(to_embed) * per_image <= SHARE_ABOVE_SECONDS:
        return items
    keep = share_point(len(to_embed), per_image, queue_depth(ctx.redis, EMBED_QUEUE) > 0)
    if keep == len(to_embed):
        return items
    shared = to_embed[keep:]
    embed.apply_async(args=[shared], argsrepr=describe_batch([PreparedImage.from_message(i) for i in shared], "images"))
    return [item for item in items if not any(item is other for other in shared)]


@app.task(name=EMBED_TASK, base=EmbedTask, bind=True)
def embed(self: Task, items: list[dict[str, Any]]) -> dict[str, Any]:
    with redelivered_on_infrastructure_errors():
        ctx = pipeline.current_context()
        if len(items) > 1 and handed_back(self):
            # A batch coming back may hold an image that kills the embedding process: go on one image per
            # message, so only that image ends up failed, not its batch-mates.
            for item in items:
                embed.apply_async(args=[[item]], argsrepr=describe_batch([PreparedImage.from_message(item)], "images"))
            return {"embedded": 0, "split": len(items)}
        items = _share_with_idle_siblings(ctx, items)
        prepared = [PreparedImage.from_message(item) for item in items]
        jobs = [item.job for item in prepared]
        if too_many_deliveries(self, EMBED, jobs):
            return {"embedded": 0}
        try:
            points = pipeline.embed_stage(ctx, prepared)
        except ModelUnavailable as exc:
            log.error("%s", exc)
            pipeline.fail_jobs(ctx, jobs, EMBED, "model_unavailable", str(exc))
            return {"embedded": 0}
        except Rejected as exc:
            pipeline.fail_jobs(ctx, jobs, exc.stage, exc.reason, exc.detail)
            return {"embedded": 0}
        index.apply_async(args=[[point.to_message() for point in points]], argsrepr=describe_batch(points, "points"))
    return {"embedded": len(points)}


# ------------------------------------------------------------------------------------------------- index
# How long a batch that finds the store's disk full waits for space before going back to its queue: short, as
# the store owner's single process also answers queries.
DISK_PAUSE = 2.0


@contextmanager
def put_back_while_disk_full(ctx: pipeline.WorkerContext) -> Iterator[None]:
    """A write that finds the store's disk full waits a moment, then its message goes back to the queue: never
    failed, and (checked before the delivery count) never counted as a delivery, however long the disk stays
    full. The guard has shared, counted and logged the condition (see lookalike.worker.diskspace)."""
    try:
        ctx.check_store_space()
    except StoreDiskFull as exc:
        if ctx.disk_guard is None or not ctx.disk_guard.wait_for_room(DISK_PAUSE):
            raise Reject(exc, requeue=True) from exc
    try:
        yield
    except StoreDiskFull as exc:  # the engine itself ran out of space mid-write
        time.sleep(DISK_PAUSE)
        raise Reject(exc, requeue=True) from exc


@app.task(name=INDEX_TASK, base=IndexTask, bind=True)
def index(self: Task, points: list[dict[str, Any]]) -> dict[str, Any]:
    with redelivered_on_infrastructure_errors():
        ctx = pipeline.current_context()
        parsed = [EmbeddedPoint.from_message(point) for point in points]
        jobs = [point.job for point in parsed]
        with put_back_while_disk_full(ctx):
            if too_many_deliveries(self, INDEX, jobs):
                return {"indexed": 0}
            reports = _index_or_retry(self, ctx, parsed, jobs)
        if reports is None:
            return {"indexed": 0}
        redo = [job for report in reports for job in report.redo]
        for job in redo:  # embedded with the model a reindex just replaced: once more, with the new one
            fetch.apply_async(args=[job.to_message()], argsrepr=job.describe())
    return {
        "indexed": sum(r.indexed for r in reports),
        "superseded": sum(r.superseded for r in reports),
        "failed": sum(r.failed for r in reports),
        "reconciled": sum(r.reconciled for r in reports),
        "duplicate_pairs": sum(r.duplicate_pairs for r in reports),
        "redone": len(redo),
    }


def _index_or_retry(
    task: Task, ctx: pipeline.WorkerContext, parsed: list[EmbeddedPoint], jobs: list[Job]
) -> list[pipeline.IndexReport] | None:
    """One index stage per collection the batch names (the live one, or a reindex's shadow)."""
    by_collection: dict[str | None, list[EmbeddedPoint]] = {}
    for point in parsed:
        by_collection.setdefault(point.job.collection, []).append(point)
    try:
        return [pipeline.index_stage(ctx, group, collection) for collection, group in by_collection.items()]
    except StoreDiskFull:
        raise
    except StoreUnavailable as exc:
        # The vectors ride along with the retry: a store outage never throws a batch away.
        retry_store(task, ctx, exc, jobs)
        return None


def retry_store(task: Task, ctx: pipeline.WorkerContext, exc: StoreUnavailable, jobs: Sequence[Job]) -> None:
    """The store's retry policy (LOOKALIKE_STORE_RETRIES, STORE_BACKOFF_MAX), then ``store_unavailable``."""
    retry_or_fail(
        task,
        exc,
        jobs,
        stage=INDEX,
        reason="store_unavailable",
        detail=str(exc),
        retries=ctx.settings.store_retries,
        backoff_max=ctx.settings.store_backoff_max,
    )


@app.task(name=RECONCILE_TASK, bind=True)
def reconcile(self: Task, product_ids: list[str], run_id: str | None = None) -> dict[str, Any]:
    with redelivered_on_infrastructure_errors():
        ctx = pipeline.current_context()
        try:
            with put_back_while_disk_full(ctx):
                changed = pipeline.reconcile_stage(ctx, [str(p) for p in product_ids])
        except StoreUnavailable as exc:
            # No job to record: a reconcile that runs out of retries fails loudly (its run never completes).
            retry_store(self, ctx, exc, [])
            raise
        if run_id:
            ctx.ledger.add(run_id, {"reconciles_done": 1}, global_too=False)
    return {"changed": changed}


@app.task(name=AUDIT_TASK, ignore_result=False, acks_late=False)
def audit(collection: str | None = None) -> dict[str, Any]:
    """The store side of `lookalike reconcile` (and of a reindex's catch-up, on its shadow collection): delete
    orphan points, report registered images with none."""
    return pipeline.audit_stage(pipeline.current_context(), collection=collection).to_data()


@app.task(name=SWITCH_TASK, ignore_result=False, acks_late=False)
def switch(collection: str) -> dict[str, Any]:
    """Make ``collection`` the live one (`lookalike reindex --model`), on the store owner, between two queries."""
    return pipeline.switch_stage(pipeline.current_context(), collection)


@app.task(name=DROP_TASK, ignore_result=False, acks_late=False)
def drop(collection: str) -> dict[str, Any]:
    """Delete a collection that is not live (`lookalike reindex --drop-old`), on the store owner."""
    return pipeline.drop_stage(pipeline.current_context(), collection)


@app.task(name=REINDEX_TASK, ignore_result=False)
def reindex() -> dict[str, Any]:
    """`lookalike reindex` on the store owner (acknowledged when done: a killed run is delivered again)."""
    return pipeline.reindex_stage(pipeline.current_context())


@app.task(name=DUPLICATES_SCAN_TASK, ignore_result=False, acks_late=False)
def duplicates_scan(restart: bool = False, page: int = 1000) -> dict[str, Any]:
    """One page of `lookalike duplicates scan` on the store owner (short, so index batches interleave)."""
    from lookalike.worker.duplicates import scan_stage

    return scan_stage(pipeline.current_context(), restart=restart, page=page)


@app.task(name=OPTIMIZE_TASK)
def optimize() -> dict[str, Any]:
    """Build the store's search index, once shoppers are quiet: an embedded store's optimize holds the store owner
    for its whole length (minutes at 100,000 points), so while queries arrive it is sent again for later and the
    queries search the new points unindexed meanwhile (``LOOKALIKE_OPTIMIZE_QUIET``; the wait stays well inside
    the visibility timeout, so the message held meanwhile is not handed out twice)."""
    ctx = pipeline.current_context()
    if not ctx.queries_are_quiet():
        wait = max(1.0, min(ctx.settings.optimize_quiet, ctx.settings.visibility_timeout / 2))
        optimize.apply_async(countdown=wait)
        log.info("optimize deferred by %gs: shoppers' queries arrived within %gs", wait, ctx.settings.optimize_quiet)
        return {"optimized": False, "deferred": True}
    ctx.store.optimize()
    return {"optimized": True}


# ------------------------------------------------------------------------------------------------- query
# A shopper's query sends no task events (``send_events=False``): three event messages per task, two tasks a
# query, were a third of the CPU its encode and search steps spent outside the model and the store (measured
# with py-spy), on the path a shopper waits on. Queries are watched through the API's own
# ``lookalike_api_request_seconds`` histogram instead; Flower still sees every catalogue stage.
QUERY_TASK_OPTIONS: dict[str, Any] = {"acks_late": False, "send_events": False}


@app.task(name=ENCODE_TASK, **QUERY_TASK_OPTIONS)
def encode(request: dict[str, Any]) -> dict[str, Any]:
    """A query's embedding, on the shoppers' encode processes: ``{"vector": base64 or None}``, or a refusal as
    data (``{"error": reason, "detail": ...}``); words whose text model cannot load come back as
    ``{"vector": None, "fallback": "keyword", "note": why}`` (the search then runs on keywords only). Sent
    chained to ``search_encoded``, which gets this result."""
    ctx = pipeline.current_context()
    try:
        parsed = SearchRequest.from_message(request, max_image_bytes=ctx.settings.query_max_bytes)
        vector, model = pipeline.encode_query(ctx, parsed)
    except QueryRejected as exc:
        return exc.as_data()
    except KeywordFallback as fallback:
        return {"vector": None, "fallback": "keyword", "note": fallback.note}
    return {"vector": None if vector is None else encode_vector(vector), "model": model}


@app.task(name=SEARCH_TASK, ignore_result=False, **QUERY_TASK_OPTIONS)
def search(
    request: dict[str, Any], vector: str | None = None, model: str | None = None, reply: str | None = None
) -> dict[str, Any]:
    """A search request (and its vector and model fingerprint from ``encode``) in, a response out, on the store
    owner: it never downloads and never runs the model. A refusal comes back as data (``{"error": reason,
    "detail": ...}``). With ``reply``, the answer is also pushed to that list, where its sender waits
    (:mod:`lookalike.state.replies`; it then sends the task with ``ignore_result``)."""
    return _replied(reply, _search(request, vector, model))


@app.task(name=SEARCH_ENCODED_TASK, ignore_result=False, **QUERY_TASK_OPTIONS)
def search_encoded(encoded: dict[str, Any], request: dict[str, Any], reply: str | None = None) -> dict[str, Any]:
    """The second link of a query's chain (``encode | search_encoded``): the encode step's result in, the
    search's answer out (and to ``reply``, as for ``search``), so the sender waits on one answer. A refusal
    from the encode step passes through."""
    if "error" in encoded:
        return _replied(reply, encoded)
    if encoded.get("fallback") == "keyword":  # no text model: keywords only, and the answer says so
        answer = _search({**request, "mode": "keyword"}, None, None)
        answer = answer if "error" in answer else {**answer, "mode": "keyword", "note": encoded.get("note")}
        return _replied(reply, answer)
    return _replied(reply, _search(request, encoded.get("vector"), encoded.get("model")))


def _search(request: dict[str, Any], vector: str | None, model: str | None) -> dict[str, Any]:
    ctx = pipeline.current_context()
    try:
        parsed = SearchRequest.from_message(request, max_image_bytes=ctx.settings.query_max_bytes)
        decoded = None if vector is None else decode_vector(vector)
        return pipeline.search_encoded(ctx, parsed, decoded, model).to_data()
    except QueryRejected as exc:
        return exc.as_data()
    except StoreError as exc:
        return {"error": "store_error", "detail": str(exc)}


def _replied(reply: str | None, answer: dict[str, Any]) -> dict[str, Any]:
    if reply:
        ctx = pipeline.current_context()
        send_reply(ctx.redis, reply, answer, ctx.settings.query_result_ttl)
    return answer


# ----------------------------------------------------------------------------------------- process setup
_consumes: set[str] = set()
_node: list[str] = []
_presence_stop = threading.Event()
_presence_beats: list[threading.Thread] = []


@signals.celeryd_after_setup.connect
def _remember_queues(sender: str, instance: Any, conf: Any, **_: Any) -> None:
    _consumes.update(q.name for q in instance.app.amqp.queues.consume_from.values())
    _node.append(str(sender))
    # One structured line per job outcome, whatever Celery's own log level is.
    configure_logging(get_settings().log_level)


def _load_model() -> None:
    if EMBED_QUEUE in _consumes or ENCODE_QUEUE in _consumes:
        ctx = pipeline.current_context()
        if EMBED_QUEUE not in _consumes:
            ctx.serve_queries()  # the shoppers' own processes: every usable CPU for one query
        ctx.embedder  # noqa: B018


@signals.worker_process_init.connect
def _load_model_after_fork(**_: Any) -> None:
    # Prefork children: load the model here, after the fork, never in the parent.
    _load_model()


def _runs_tasks_itself(consumer: Any) -> bool:
    """The worker runs its tasks in its own process (the solo pool: the store owner, the shoppers' encode
    processes), not in prefork children."""
    return type(getattr(consumer, "pool", None)).__module__ == "celery.concurrency.solo"


@signals.worker_ready.connect
def _open_store(sender: Any = None, **_: Any) -> None:
    # The store owner (solo pool) opens the store up front: a locked store fails loudly now. It loads no model:
    # it writes vectors it is given and searches with vectors it is given.
    if INDEX_QUEUE in _consumes or QUERY_QUEUE in _consumes:
        ctx = pipeline.current_context()
        ctx.ready_store(model_dimension(ctx.settings.model))
        ctx.owning_model()  # a collection without a model record adopts the configured models now, and says so
    if _runs_tasks_itself(sender):
        _load_model()  # a solo encode process: its model is loaded before it says it is alive
    # Only now, ready to consume, does the worker say it is alive (see lookalike.state.presence).
    ctx = pipeline.current_context()
    beating = Presence(ctx.redis, ctx.settings.key_prefix).keep_beating(
        _node[0] if _node else "worker", sorted(_consumes), _presence_stop
    )
    _presence_beats.append(beating)


@signals.worker_shutdown.connect
def _close_store(**_: Any) -> None:
    _presence_stop.set()
    for beating in _presence_beats:  # a beat in flight must not write the key again after it is deleted below
        beating.join(timeout=2)
    if _node:
        try:
            ctx = pipeline.current_context()
            Presence(ctx.redis, ctx.settings.key_prefix).leave(_node[0])
        except redis.RedisError:
            pass
    pipeline.reset_context()


__all__ = [
    "audit", "drop", "duplicates_scan", "embed", "encode", "fetch", "fetch_batch", "index", "optimize", "reconcile",
    "reindex", "search", "search_encoded", "switch",
]  # fmt: skip
