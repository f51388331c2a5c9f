"""The stages as plain functions over a per-process :class:`Context`; the Celery tasks only call these.

fetch_stage:  Job -> prepared item (downloaded, hashed, decoded to model size; or a cached vector)
embed_stage:  prepared items -> points (one model call for the batch)
index_stage:  points -> upserted into the store with the product's current payload; outcomes counted
reconcile:    make a product's points match the registry (removed images, payload changes, deletes)
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis

from lookalike.config.settings import Settings, get_settings
from lookalike.producer.product import point_id_for
from lookalike.worker.cache import EmbeddingCache, content_hash, model_fingerprint
from lookalike.worker.decode import ImageRejected, decode_image, decode_slots, decode_transport, encode_for_transport
from lookalike.worker.embed import Embedder, ModelSpec, get_embedder
from lookalike.worker.failures import Failure, FailureLog
from lookalike.worker.fetch import AddressPolicy, FetchError, FetchLimits, fetch_image, make_session
from lookalike.worker.jobs import Job, decode_bytes, decode_vector, encode_bytes, encode_vector
from lookalike.worker.ledger import FAILED, INDEXED, SUPERSEDED, Ledger, Outcome
from lookalike.worker.logs import OutcomeLogger
from lookalike.worker.query import QueryError, load_query_image, search_products
from lookalike.worker.queues import INDEX_QUEUE, queue_depth
from lookalike.worker.registry import ProductRegistry, ProductState
from lookalike.worker.store import PointRecord, VectorStore, open_store

OPTIMIZE_AFTER_POINTS = 20_000


def redis_client(settings: Settings) -> redis.Redis:
    """A client for lookalike's own keys on the broker's Redis (rediss:// and passwords come from the URL)."""
    return redis.Redis.from_url(
        settings.broker_url.get_secret_value(),
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
        retry_on_timeout=True,
    )


class Context:
    """What one process needs to run stages: settings, Redis-backed state, and lazily the heavy parts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client(settings)
        self.ledger = Ledger(self.redis, settings.key_prefix, settings.run_ttl)
        self.failures = FailureLog(self.redis, settings.key("failures"), settings.failures_cap)
        self.registry = ProductRegistry(self.redis, settings.key("products", settings.collection))
        self.model_spec = ModelSpec.from_settings(settings)
        self.cache = EmbeddingCache(
            self.redis,
            settings.key_prefix,
            model_fingerprint(settings.model, str(settings.model_dir) if settings.model_dir else None),
            settings.embed_cache_ttl,
        )
        self.log = OutcomeLogger(settings.log_format)
        self.limits = FetchLimits(
            connect_timeout=settings.fetch_connect_timeout,
            read_timeout=settings.fetch_read_timeout,
            deadline=settings.fetch_deadline,
            max_bytes=settings.fetch_max_bytes,
        )
        self.policy = AddressPolicy.from_networks(settings.allowed_networks)
        # Hundreds of threads wait on the network, but decoding is CPU work: two at once per core, which keeps
        # the cores busy and bounds the memory that full-size decoded images can take.
        self.decode_slots = threading.BoundedSemaphore(
            decode_slots(settings.decode_memory_budget, settings.max_image_pixels)
        )
        self._store: VectorStore | None = None
        self._store_ready_dim: int | None = None
        self._unoptimized = 0

    @cached_property
    def session(self) -> Any:
        return make_session(
            self.policy,
            user_agent=self.settings.fetch_user_agent,
            max_redirects=self.settings.fetch_max_redirects,
            pool_size=max(16, self.settings.fetch_concurrency),
        )

    @property
    def embedder(self) -> Embedder:
        return get_embedder(self.model_spec)

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    def ready_store(self, dim: int) -> VectorStore:
        """The store with its collection created (once per process)."""
        store = self.store
        if self._store_ready_dim != dim:
            store.ensure_collection(dim)
            self._store_ready_dim = dim
        return store

    def maybe_optimize(self, written: int) -> bool:
        """Build the search index once enough points came in and no batch is waiting (store owner only).

        Without it an embedded store fed only by events would search its new points by brute force.
        """
        self._unoptimized += written
        if self._unoptimized < OPTIMIZE_AFTER_POINTS or queue_depth(self.redis, INDEX_QUEUE):
            return False
        self.store.optimize()
        self._unoptimized = 0
        return True

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            self._store_ready_dim = None


_context: tuple[int, Context] | None = None
_context_lock = threading.Lock()


def current_context() -> Context:
    """The process's context (rebuilt after a fork: sockets and sessions are not shared with a parent).

    Built once even when the first tasks of a thread pool ask for it all at once."""
    global _context
    with _context_lock:
        if _context is None or _context[0] != os.getpid():
            _context = (os.getpid(), Context(get_settings()))
        return _context[1]


def reset_context() -> None:
    global _context
    if _context is not None and _context[0] == os.getpid():
        _context[1].close()
    _context = None


# ----------------------------------------------------------------------------------------------- failures
def fail_jobs(ctx: Context, jobs: Sequence[Job], stage: str, reason: str, detail: str = "") -> None:
    """Record jobs as failed for good: dead-letter entry, counters, one log line each."""
    if not jobs:
        return
    ctx.failures.add(
        Failure(
            product_id=job.product_id,
            image_url=job.image_url,
            stage=stage,
            reason=reason,
            run_id=job.run_id,
            detail=detail[:500],
            job=job.to_message(),
        )
        for job in jobs
    )
    ctx.ledger.record(Outcome(job.job_id, job.run_id, FAILED, reason=reason) for job in jobs)
    for job in jobs:
        ctx.log(
            FAILED,
            run_id=job.run_id,
            product_id=job.product_id,
            url=job.image_url,
            stage=stage,
            reason=reason,
            detail=detail[:200] or None,
        )


# ------------------------------------------------------------------------------------------------- fetch
def fetch_stage(ctx: Context, job: Job) -> dict[str, Any]:
    """Download and prepare one image. Raises FetchError / ImageRejected; the task decides on retries."""
    started = time.time()
    timings = {"queue_wait": max(0.0, started - job.enqueued_at)}
    fetched = fetch_image(job.image_url, ctx.session, ctx.limits)
    timings["download"] = fetched.seconds
    digest = content_hash(fetched.data)
    item: dict[str, Any] = {"job": job.to_message(), "sha256": digest, "timings": timings}
    cached = ctx.cache.get(digest)
    if cached is not None:
        item["vector"] = encode_vector(cached)
    else:
        with ctx.decode_slots:
            decode_started = time.perf_counter()
            image = decode_image(
                fetched.data, max_pixels=ctx.settings.max_image_pixels, formats=ctx.settings.allowed_image_formats
            )
            item["image"] = encode_bytes(encode_for_transport(image))
            timings["decode"] = time.perf_counter() - decode_started
    item["sent_at"] = time.time()
    return item


def _timings_with_wait(message: dict[str, Any], received: float) -> dict[str, float]:
    """The stage timings a message carries, plus the time it waited in the queue it just left."""
    timings = dict(message.get("timings") or {})
    waited = max(0.0, received - float(message.get("sent_at", received)))
    timings["queue_wait"] = timings.get("queue_wait", 0.0) + waited
    return timings


# ------------------------------------------------------------------------------------------------- embed
def embed_stage(ctx: Context, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Embed the batch's images in one model call; cached vectors pass through. Returns index points."""
    started = time.time()
    to_embed = [item for item in items if "vector" not in item]
    vectors: dict[int, Any] = {}
    if to_embed:
        images = [decode_transport(decode_bytes(item["image"])) for item in to_embed]
        embed_started = time.perf_counter()
        embedded = ctx.embedder.embed(images)
        seconds = time.perf_counter() - embed_started
        per_run = Counter(str(item["job"]["run_id"]) for item in to_embed)
        ctx.ledger.count_embedding(dict(per_run), seconds)
        for item, vector in zip(to_embed, embedded, strict=True):
            vectors[id(item)] = vector
        ctx.cache.put_many({item["sha256"]: vector for item, vector in zip(to_embed, embedded, strict=True)})
    points = []
    for item in items:
        vector = vectors.get(id(item))
        timings = _timings_with_wait(item, started)
        points.append(
            {
                "job": item["job"],
                "sha256": item["sha256"],
                "vector": item["vector"] if vector is None else encode_vector(vector),
                "cached": vector is None,
                "timings": timings,
                "sent_at": time.time(),
            }
        )
    return points


# ------------------------------------------------------------------------------------------------- index
@dataclass
class IndexReport:
    indexed: int = 0
    superseded: int = 0
    failed: int = 0
    reconciled: int = 0


def index_stage(ctx: Context, points: Sequence[dict[str, Any]]) -> IndexReport:
    """Write the batch in one upsert, each point with its product's current payload.

    Points whose product was deleted, or whose image was removed, since the job was enqueued are dropped
    (``superseded``). If the registry changes while the upsert runs, the products concerned are reconciled
    afterwards, so a concurrent delete or image removal cannot leave an orphan behind.
    """
    started = time.time()
    report = IndexReport()
    jobs = [Job.from_message(point["job"]) for point in points]
    before = ctx.registry.get_many(job.product_id for job in jobs)
    records: list[PointRecord] = []
    outcomes: list[tuple[Job, Outcome]] = []
    unknown: list[Job] = []
    for point, job in zip(points, jobs, strict=True):
        timings = _timings_with_wait(point, started)
        state = before.get(job.product_id)
        if state is None:
            unknown.append(job)
        elif not state.wants(job.image_url):
            outcomes.append((job, Outcome(job.job_id, job.run_id, SUPERSEDED, timings=timings)))
            report.superseded += 1
        else:
            payload = {**state.payload, "image_url": job.image_url, "image_sha256": point.get("sha256")}
            records.append(PointRecord(job.point_id, decode_vector(point["vector"]), payload))
            outcomes.append(
                (job, Outcome(job.job_id, job.run_id, INDEXED, cached=bool(point.get("cached")), timings=timings))
            )
            report.indexed += 1
    upsert_seconds = 0.0
    if records:
        store = ctx.ready_store(len(records[0].vector))
        upsert_started = time.perf_counter()
        store.upsert(records)
        upsert_seconds = time.perf_counter() - upsert_started
        written = {job.product_id for job, outcome in outcomes if outcome.status == INDEXED}
        after = ctx.registry.get_many(written)
        report.reconciled = reconcile(
            ctx, store, [pid for pid, state in after.items() if state != before.get(pid)], after
        )
        ctx.ledger.batch_time("upsert", upsert_seconds, (job.run_id for job, _ in outcomes))
    ctx.ledger.record(outcome for _, outcome in outcomes)
    for job, outcome in outcomes:
        ctx.log(
            outcome.status,
            run_id=job.run_id,
            product_id=job.product_id,
            url=job.image_url,
            stage="index",
            seconds=round(sum(outcome.timings.values()) + upsert_seconds, 4),
            cached=outcome.cached or None,
        )
    if unknown:
        fail_jobs(ctx, unknown, "index", "unknown_product", "the product is not in the registry (was it ingested?)")
        report.failed = len(unknown)
    if records:
        ctx.maybe_optimize(len(records))  # after the outcomes are counted: it can take a while
    return report


# ------------------------------------------------------------------------------------------------- query
def answer_query(ctx: Context, source: dict[str, Any], *, k: int, category: str | None) -> list[dict[str, Any]]:
    """The query task's body, also run in-process by `lookalike search` when no worker is up.

    Every refusal comes out as a :class:`QueryError` with a reason (bad input, undecodable image, a download
    the fetch guard refused).
    """
    try:
        image = load_query_image(source, max_bytes=ctx.settings.query_max_bytes, session=ctx.session, limits=ctx.limits)
        return search_products(
            image,
            k=k,
            category=category,
            embedder=ctx.embedder,
            store=ctx.store,
            max_pixels=ctx.settings.max_image_pixels,
            formats=ctx.settings.allowed_image_formats,
        )
    except (ImageRejected, FetchError) as exc:
        raise QueryError(exc.reason, exc.detail) from exc


# --------------------------------------------------------------------------------------------- reconcile
def reconcile(
    ctx: Context,
    store: VectorStore,
    product_ids: Iterable[str],
    states: dict[str, ProductState | None] | None = None,
) -> int:
    """Make each product's points match its registry entry: delete points of removed images (all of them for
    a deleted product), and overwrite the product fields where they differ. Returns products changed."""
    ids = list(dict.fromkeys(product_ids))
    if not ids:
        return 0
    states = states if states is not None else ctx.registry.get_many(ids)
    changed = 0
    stale_points: list[str] = []
    for product_id in ids:
        state = states.get(product_id)
        if state is None or state.deleted:
            if store.count(product_id):
                store.delete_product(product_id)
                changed += 1
            continue
        wanted = {point_id_for(product_id, url) for url in state.images}
        needs_payload = False
        removed = 0
        for point_id, payload, _vector in store.scroll(product_id=product_id):
            if point_id not in wanted:
                stale_points.append(point_id)
                removed += 1
            elif any(payload.get(key) != value for key, value in state.payload.items()):
                needs_payload = True
        if needs_payload:
            store.set_product_payload(product_id, state.payload)
        if needs_payload or removed:
            changed += 1
    store.delete_ids(stale_points)
    return changed


def reconcile_stage(ctx: Context, product_ids: Sequence[str]) -> int:
    """The store-side half of a catalogue change (payload update, removed images, delete)."""
    started = time.perf_counter()
    changed = reconcile(ctx, ctx.store, product_ids)
    ctx.ledger.count_global({"reconciled_products": changed})
    ctx.log(
        "reconciled",
        stage="reconcile",
        products=len(product_ids),
        changed=changed,
        seconds=round(time.perf_counter() - started, 4),
    )
    return changed
