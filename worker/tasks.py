"""Thin Celery tasks over the pipeline stages: parse the message, call a plain function, return JSON.

Retries come from Celery itself (``autoretry_for`` with exponential backoff and jitter); when they run out,
``on_failure`` records every job of the message as failed, so nothing ends silently.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task, signals

from lookalike.config.settings import get_settings
from lookalike.worker import pipeline
from lookalike.worker.app import EMBED_QUEUE, INDEX_QUEUE, QUERY_QUEUE, app
from lookalike.worker.batcher import Batcher
from lookalike.worker.decode import ImageRejected
from lookalike.worker.fetch import FetchError, PermanentFetchError, TransientFetchError
from lookalike.worker.jobs import Job
from lookalike.worker.logs import configure_logging
from lookalike.worker.queues import queue_depth, wait_below
from lookalike.worker.store import StoreUnavailable

log = logging.getLogger(__name__)
settings = get_settings()


def _jobs_of(args: tuple[Any, ...]) -> list[Job]:
    """The jobs a task message carries (a job, or a batch of items/points each holding one)."""
    if not args:
        return []
    first = args[0]
    try:
        if isinstance(first, dict):
            return [Job.from_message(first)]
        return [Job.from_message(item["job"]) for item in first]
    except (KeyError, TypeError, ValueError):
        return []


class RecordingTask(Task):
    """A task whose final failure is recorded for each of its jobs (dead-letter list and counters)."""

    stage = "task"

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        jobs = _jobs_of(args)
        reason = getattr(exc, "reason", None) or (
            "store_unavailable" if isinstance(exc, StoreUnavailable) else f"internal_{type(exc).__name__}"
        )
        try:
            pipeline.fail_jobs(pipeline.current_context(), jobs, self.stage, reason, str(exc))
        except Exception:
            log.exception("could not record the failure of %d job(s) of task %s", len(jobs), task_id)


class FetchTask(RecordingTask):
    stage = "fetch"


class EmbedTask(RecordingTask):
    stage = "embed"


class IndexTask(RecordingTask):
    stage = "index"


# ------------------------------------------------------------------------------------------------- fetch
_batcher_lock = threading.Lock()
_batcher: tuple[int, Batcher] | None = None


def _send_embed_batch(items: list[dict[str, Any]]) -> None:
    ctx = pipeline.current_context()
    wait_below(lambda: queue_depth(ctx.redis, EMBED_QUEUE), settings.embed_high_water)
    first = items[0]["job"]
    embed.apply_async(args=[items], argsrepr=f"[{len(items)} images: {first['product_id']} {first['image_url']} ...]")


def _fetch_batcher() -> Batcher:
    global _batcher
    import os

    with _batcher_lock:
        if _batcher is None or _batcher[0] != os.getpid():
            _batcher = (os.getpid(), Batcher(_send_embed_batch, settings.batch_size, settings.batch_linger))
        return _batcher[1]


@app.task(
    name="lookalike.fetch",
    base=FetchTask,
    bind=True,
    autoretry_for=(TransientFetchError,),
    retry_backoff=1,
    retry_backoff_max=settings.fetch_backoff_max,
    retry_jitter=True,
    max_retries=settings.fetch_retries,
)
def fetch(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    ctx = pipeline.current_context()
    parsed = Job.from_message(job)
    try:
        item = pipeline.fetch_stage(ctx, parsed)
    except PermanentFetchError as exc:
        pipeline.fail_jobs(ctx, [parsed], "fetch", exc.reason, exc.detail)
        return {"outcome": "failed", "reason": exc.reason}
    except ImageRejected as exc:
        pipeline.fail_jobs(ctx, [parsed], "decode", exc.reason, exc.detail)
        return {"outcome": "failed", "reason": exc.reason}
    _fetch_batcher().submit(item)
    return {"outcome": "sent_to_embed", "cached": "vector" in item}


# ------------------------------------------------------------------------------------------------- embed
@app.task(name="lookalike.embed", base=EmbedTask, bind=True)
def embed(self: Task, items: list[dict[str, Any]]) -> dict[str, Any]:
    ctx = pipeline.current_context()
    points = pipeline.embed_stage(ctx, items)
    first = points[0]["job"] if points else {"product_id": "-", "image_url": "-"}
    index.apply_async(args=[points], argsrepr=f"[{len(points)} points: {first['product_id']} {first['image_url']} ...]")
    return {"embedded": len(points)}


# ------------------------------------------------------------------------------------------------- index
@app.task(
    name="lookalike.index",
    base=IndexTask,
    bind=True,
    autoretry_for=(StoreUnavailable,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=settings.store_retries,
)
def index(self: Task, points: list[dict[str, Any]]) -> dict[str, Any]:
    report = pipeline.index_stage(pipeline.current_context(), points)
    return report.__dict__


@app.task(
    name="lookalike.reconcile",
    bind=True,
    autoretry_for=(StoreUnavailable,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=settings.store_retries,
)
def reconcile(self: Task, product_ids: list[str], run_id: str | None = None) -> dict[str, Any]:
    ctx = pipeline.current_context()
    changed = pipeline.reconcile_stage(ctx, [str(p) for p in product_ids])
    if run_id:
        ctx.ledger.add(run_id, {"reconciles_done": 1}, global_too=False)
    return {"changed": changed}


@app.task(name="lookalike.optimize", autoretry_for=(StoreUnavailable,), retry_backoff=2, max_retries=5)
def optimize() -> dict[str, Any]:
    pipeline.current_context().store.optimize()
    return {"optimized": True}


# ------------------------------------------------------------------------------------------------- query
@app.task(name="lookalike.search", ignore_result=False, acks_late=False)
def search(source: dict[str, Any], k: int = 5, category: str | None = None) -> list[dict[str, Any]]:
    return pipeline.answer_query(pipeline.current_context(), source, k=int(k), category=category or None)


# ----------------------------------------------------------------------------------------- process setup
_consumes: set[str] = set()


@signals.celeryd_after_setup.connect
def _remember_queues(sender: str, instance: Any, conf: Any, **_: Any) -> None:
    _consumes.update(q.name for q in instance.app.amqp.queues.consume_from.values())
    # One structured line per job outcome, whatever Celery's own log level is.
    configure_logging(settings.log_level)


@signals.worker_process_init.connect
def _load_model_after_fork(**_: Any) -> None:
    # Prefork children: load the model here, after the fork, never in the parent.
    if EMBED_QUEUE in _consumes:
        pipeline.current_context().embedder  # noqa: B018


@signals.worker_ready.connect
def _open_store(sender: Any = None, **_: Any) -> None:
    # The store owner (solo pool) opens the store and the model up front: a locked store fails loudly now.
    if INDEX_QUEUE in _consumes or QUERY_QUEUE in _consumes:
        ctx = pipeline.current_context()
        ctx.ready_store(ctx.embedder.dim)


@signals.worker_shutdown.connect
def _close_store(**_: Any) -> None:
    pipeline.reset_context()


__all__ = ["FetchError", "embed", "fetch", "index", "optimize", "reconcile", "search"]
