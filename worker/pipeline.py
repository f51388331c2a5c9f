"""The stages as plain functions over a per-process :class:`WorkerContext`; the Celery tasks only call these.

fetch_stage:  Job -> PreparedImage (downloaded, hashed, decoded to model size; or a cached vector)
embed_stage:  PreparedImages -> EmbeddedPoints (one model call for the batch)
index_stage:  EmbeddedPoints -> upserted into the store with the product's current payload; outcomes counted
reconcile:    make a product's points match the registry (removed images, payload changes, deletes)
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from lookalike.config.settings import Settings, get_settings
from lookalike.state.context import StateContext
from lookalike.state.errors import INDEX
from lookalike.state.failures import Failure
from lookalike.state.ledger import Outcome
from lookalike.state.messages import EmbeddedPoint, Job, PreparedImage, encode_vector, point_id_for
from lookalike.state.outcomes import FAILED, INDEXED, SUPERSEDED
from lookalike.state.process import process_cache
from lookalike.state.queues import INDEX_QUEUE, QUERY_QUEUE, queue_depth
from lookalike.state.registry import ProductState
from lookalike.state.search import SearchRequest, SearchResponse
from lookalike.worker.cache import EmbeddingCache, content_hash, model_fingerprint
from lookalike.worker.decode import ImageRejected, decode_image, decode_slots, decode_transport, encode_for_transport
from lookalike.worker.embed import Embedder
from lookalike.worker.fetch import AddressPolicy, FetchLimits, fetch_image, make_session
from lookalike.worker.keywords import document_vector
from lookalike.worker.logs import OutcomeLogger
from lookalike.worker.model import ModelSpec
from lookalike.worker.prepare import QueryPreparer
from lookalike.worker.query import encode_request, run_search, search_request
from lookalike.worker.store import PointRecord, Sparse, StoreError, VectorStore, open_store
from lookalike.worker.text import TextEmbedder

OPTIMIZE_AFTER_POINTS = 20_000
# An optimize of the embedded store holds the store owner until it ends (qdrant-edge keeps the GIL for the
# whole call: measured, a Python thread got 2 ticks in a 20 s optimize of 20,000 points, so a background thread
# answers nothing meanwhile), and takes minutes at 100,000 points. So it waits for LOOKALIKE_OPTIMIZE_QUIET
# seconds without a shopper's query; meanwhile queries search the new points unindexed (12 ms p95 at 100,000).


class WorkerContext(StateContext):
    """The light context plus what a worker process needs to run stages; the heavy parts are built lazily."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.model_spec = Embedder.spec_from(settings)
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
        # Hundreds of threads wait on the network, but decoding is CPU work: at most two at once per usable core,
        # and no more than the memory budget allows for images at the pixel cap.
        self.decode_slots = threading.BoundedSemaphore(
            decode_slots(settings.decode_memory_budget, settings.max_image_pixels)
        )
        self._store: VectorStore | None = None
        self._store_ready_dim: int | None = None
        self._unoptimized = 0
        # Monotonic time of the store owner's last search; a store owner that just started has not seen the
        # shoppers yet, so its start counts as one (a pending optimize waits for a quiet moment after a restart).
        self.last_query = time.monotonic()

    def serve_queries(self) -> None:
        """This process encodes shoppers' queries only: the models run with the query processes' ONNX threads."""
        self.model_spec = Embedder.spec_from(self.settings, threads=self.settings.query_onnx_threads)
        self.text_spec = TextEmbedder.spec_from(self.settings, threads=self.settings.query_onnx_threads)

    @cached_property
    def text_spec(self) -> ModelSpec:
        return TextEmbedder.spec_from(self.settings)

    def queries_are_quiet(self) -> bool:
        """No shopper's query for LOOKALIKE_OPTIMIZE_QUIET seconds: a long store operation may run now."""
        return time.monotonic() - self.last_query >= self.settings.optimize_quiet

    @cached_property
    def session(self) -> Any:
        return make_session(
            self.policy,
            user_agent=self.settings.fetch_user_agent,
            max_redirects=self.settings.fetch_max_redirects,
            pool_size=max(16, self.settings.fetch_concurrency),
        )

    @cached_property
    def query_preparer(self) -> QueryPreparer:
        """Shoppers' photos and image URLs -> the model's input (its own address policy and deadline)."""
        return QueryPreparer(self.settings)

    @property
    def embedder(self) -> Embedder:
        return Embedder.shared(self.model_spec)

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
        """Build the search index once enough points came in, no batch or query is waiting and no shopper asked
        anything lately (store owner only).

        Without it an embedded store fed only by events would search its new points by brute force.
        """
        self._unoptimized += written
        if self._unoptimized < OPTIMIZE_AFTER_POINTS or not self.queries_are_quiet():
            return False
        if queue_depth(self.redis, INDEX_QUEUE) or queue_depth(self.redis, QUERY_QUEUE):
            return False
        self.store.optimize()
        self._unoptimized = 0
        return True

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            self._store_ready_dim = None


# Kept for the tests and benchmarks that name it.
Context = WorkerContext
_CONTEXT = "worker-context"


def current_context() -> WorkerContext:
    """The process's worker context (see :mod:`lookalike.state.process`: built once, rebuilt after a fork)."""
    return process_cache.get(_CONTEXT, lambda: WorkerContext(get_settings()))


def reset_context() -> None:
    ctx = process_cache.pop(_CONTEXT)
    if ctx is not None:
        ctx.close()


# ----------------------------------------------------------------------------------------------- failures
def fail_jobs(ctx: WorkerContext, jobs: Sequence[Job], stage: str, reason: str, detail: str = "") -> None:
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
def fetch_stage(ctx: WorkerContext, job: Job) -> PreparedImage:
    """Download and prepare one image. Raises a :class:`~lookalike.state.errors.Rejected` (a FetchError or an
    ImageRejected); the task decides on retries."""
    started = time.time()
    timings = {"queue_wait": max(0.0, started - job.enqueued_at)}
    fetched = fetch_image(job.image_url, ctx.session, ctx.limits)
    timings["download"] = fetched.seconds
    digest = content_hash(fetched.data)
    cached = ctx.cache.get(digest)
    if cached is not None:
        return PreparedImage(job, digest, vector=encode_vector(cached), timings=timings)
    with ctx.decode_slots:
        decode_started = time.perf_counter()
        image = decode_image(
            fetched.data, max_pixels=ctx.settings.max_image_pixels, formats=ctx.settings.allowed_image_formats
        )
        prepared = encode_for_transport(image)
        timings["decode"] = time.perf_counter() - decode_started
    return PreparedImage(job, digest, image=prepared, timings=timings)


# ------------------------------------------------------------------------------------------------- embed
def embed_stage(ctx: WorkerContext, items: Sequence[PreparedImage]) -> list[EmbeddedPoint]:
    """Embed the batch's images in one model call; cached vectors pass through. An item whose transport image
    is refused (not the 224x224 JPEG the fetch stage makes) fails alone, with stage ``decode``."""
    started = time.time()
    images: list[Any] = []
    to_embed: list[PreparedImage] = []
    refused: list[tuple[PreparedImage, ImageRejected]] = []
    for item in items:
        if item.cached:
            continue
        try:
            images.append(decode_transport(item.image or b""))
            to_embed.append(item)
        except ImageRejected as exc:
            refused.append((item, exc))
    for item, rejection in refused:
        fail_jobs(ctx, [item.job], rejection.stage, rejection.reason, rejection.detail)
    vectors: dict[int, str] = {}
    if to_embed:
        embed_started = time.perf_counter()
        embedded = ctx.embedder.embed(images)
        seconds = time.perf_counter() - embed_started
        ctx.ledger.count_embedding(dict(Counter(item.job.run_id for item in to_embed)), seconds)
        for item, vector in zip(to_embed, embedded, strict=True):
            vectors[id(item)] = encode_vector(vector)
        ctx.cache.put_many({item.sha256: vector for item, vector in zip(to_embed, embedded, strict=True)})
    return [
        EmbeddedPoint(
            job=item.job,
            sha256=item.sha256,
            vector=item.vector if item.vector is not None else vectors[id(item)],
            cached=item.cached,
            timings=item.waited(started),
        )
        for item in items
        if item.vector is not None or id(item) in vectors
    ]


# ------------------------------------------------------------------------------------------------- index
@dataclass
class IndexReport:
    indexed: int = 0
    superseded: int = 0
    failed: int = 0
    reconciled: int = 0


def index_stage(ctx: WorkerContext, points: Sequence[EmbeddedPoint]) -> IndexReport:
    """Write the batch in one upsert, each point with its product's current payload.

    Points whose product was deleted, or whose image was removed, since the job was enqueued are dropped
    (``superseded``). If the registry changes while the upsert runs, the products concerned are reconciled
    afterwards, so a concurrent delete or image removal cannot leave an orphan behind.
    """
    started = time.time()
    report = IndexReport()
    before = ctx.registry.get_many(point.job.product_id for point in points)
    records: list[PointRecord] = []
    outcomes: list[tuple[Job, Outcome]] = []
    unknown: list[Job] = []
    keywords: dict[str, Sparse] = {}
    for point in points:
        job = point.job
        timings = point.waited(started)
        state = before.get(job.product_id)
        if state is None:
            unknown.append(job)
        elif not state.wants(job.image_url):
            outcomes.append((job, Outcome(job.job_id, job.run_id, SUPERSEDED, timings=timings)))
            report.superseded += 1
        else:
            payload = {
                **state.payload,
                "image_url": job.image_url,
                "image_sha256": point.sha256,
                # One point per product carries the flag (1): facets count products, not images.
                "primary": int(bool(state.images) and job.image_url == state.images[0]),
            }
            if job.product_id not in keywords:
                keywords[job.product_id] = document_vector(state.payload)
            records.append(PointRecord(job.point_id, point.array(), payload, keywords=keywords[job.product_id]))
            outcomes.append((job, Outcome(job.job_id, job.run_id, INDEXED, cached=point.cached, timings=timings)))
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
            stage=INDEX,
            seconds=round(sum(outcome.timings.values()) + upsert_seconds, 4),
            cached=outcome.cached or None,
        )
    if unknown:
        fail_jobs(ctx, unknown, INDEX, "unknown_product", "the product is not in the registry (was it ingested?)")
        report.failed = len(unknown)
    if records:
        ctx.maybe_optimize(len(records))  # after the outcomes are counted: it can take a while
    return report


# ------------------------------------------------------------------------------------------------- query
def answer_query(ctx: WorkerContext, request: SearchRequest) -> SearchResponse:
    """The query task's body, also run in-process by `lookalike search` when no worker is up.

    Every refusal comes out as a :class:`QueryRejected` with a reason (bad input, undecodable image, a download
    the fetch guard refused).
    """
    return run_search(
        request, embedder=lambda: ctx.embedder, store=ctx.store, preparer=ctx.query_preparer, settings=ctx.settings
    )


def encode_query(ctx: WorkerContext, request: SearchRequest) -> np.ndarray | None:
    """The query's half that costs CPU and touches the network, for the encode task on the embedding pool."""
    request.validate(max_image_bytes=ctx.settings.query_max_bytes)
    return encode_request(
        request,
        embedder=lambda: ctx.embedder,
        settings=ctx.settings,
        text_embedder=lambda: TextEmbedder.shared(ctx.text_spec),
    )


def search_encoded(ctx: WorkerContext, request: SearchRequest, vector: np.ndarray | None) -> SearchResponse:
    """The query's half on the store owner: a search with the vector it is given, no download, no model."""
    ctx.last_query = time.monotonic()
    return search_request(request, vector, store=ctx.store)


# --------------------------------------------------------------------------------------------- reconcile
def reconcile(
    ctx: WorkerContext,
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
        first = point_id_for(product_id, state.images[0]) if state.images else None
        needs_payload = False
        removed = 0
        kept: list[str] = []
        primary: dict[bool, list[str]] = {True: [], False: []}
        for point_id, payload, _vector in store.scroll(product_id=product_id):
            if point_id not in wanted:
                stale_points.append(point_id)
                removed += 1
                continue
            kept.append(point_id)
            if any(payload.get(key) != value for key, value in state.payload.items()):
                needs_payload = True
            if bool(payload.get("primary")) != (point_id == first):
                primary[point_id == first].append(point_id)  # the first image changed: move the flag
        if needs_payload:
            # Fields and keyword vector in place: no download, no embedding.
            store.set_product_payload(product_id, state.payload)
            store.set_keywords(kept, document_vector(state.payload))
        for flag, ids in primary.items():
            if ids:
                store.set_point_payload(ids, {"primary": int(flag)})
        if needs_payload or removed or primary[True] or primary[False]:
            changed += 1
    store.delete_ids(stale_points)
    return changed


def reconcile_stage(ctx: WorkerContext, product_ids: Sequence[str]) -> int:
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


# ------------------------------------------------------------------------------------------------- audit
@dataclass
class AuditReport:
    """The store compared with the registry: what was deleted, and which images have no point."""

    points_seen: int = 0
    orphan_points_deleted: int = 0
    orphan_products: int = 0
    payloads_updated: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (product id, image URL) with no point

    def to_data(self) -> dict[str, Any]:
        return {
            "points_seen": self.points_seen,
            "orphan_points_deleted": self.orphan_points_deleted,
            "orphan_products": self.orphan_products,
            "payloads_updated": self.payloads_updated,
            "missing": [list(pair) for pair in self.missing],
        }


def audit_stage(ctx: WorkerContext, *, page: int = 1000) -> AuditReport:
    """Make the store converge on the registry, whatever was lost (the queue, the registry or the store).

    Points whose product is not registered, is deleted, or no longer lists the point's image are deleted; points
    whose product fields differ from the registry's get them; the registered images that have no point are
    reported (the caller enqueues them). Reads the store once and the registry once, in pages.
    """
    report = AuditReport()
    store = ctx.store
    present: set[str] = set()
    orphans: set[str] = set()
    outdated: dict[str, dict[str, Any]] = {}
    batch: list[tuple[str, dict[str, Any]]] = []

    def settle_batch() -> None:
        states = ctx.registry.get_many(str(payload.get("product_id")) for _id, payload in batch)
        stale = []
        for point_id, payload in batch:
            product_id = str(payload.get("product_id"))
            state = states.get(product_id)
            if state is None or not state.wants(str(payload.get("image_url"))):
                stale.append(point_id)
                orphans.add(product_id)
            else:
                present.add(point_id)
                if any(payload.get(key) != value for key, value in state.payload.items()):
                    outdated[product_id] = state.payload
        if stale:
            store.delete_ids(stale)
            report.orphan_points_deleted += len(stale)
        batch.clear()

    try:
        points = list(store.scroll())
    except StoreError:  # a collection that was never created holds nothing
        points = []
    for point_id, payload, _vector in points:
        report.points_seen += 1
        batch.append((point_id, payload))
        if len(batch) >= page:
            settle_batch()
    settle_batch()
    report.orphan_products = len(orphans)
    for product_id, payload in outdated.items():
        store.set_product_payload(product_id, payload)
    report.payloads_updated = len(outdated)
    for product_id, state in ctx.registry.items():
        if state.deleted:
            continue
        report.missing.extend((product_id, url) for url in state.images if point_id_for(product_id, url) not in present)
    return report


# ----------------------------------------------------------------------------------------------- reindex
REINDEX_PAGE = 1000


def reindex_stage(ctx: WorkerContext, *, interrupt_after: int | None = None) -> dict[str, Any]:
    """Upgrade the live collection to the current layout: copy every point's stored vector into a new
    collection with its keyword vector and flags added, then switch the live collection to it.

    No download and no embedding: the vectors are the stored ones. Queries see the old collection until the
    switch, which happens only once the copy holds every point. Upserts are idempotent, so an interrupted run
    (``interrupt_after`` pages, for the tests) is simply run again. Nothing to do on a current collection.
    """
    from lookalike.worker.store import LEGACY, NAMED, live_collection, open_collection, switch_live

    source = ctx.store
    live = live_collection(ctx.settings)
    if source.layout != LEGACY:
        return {"upgraded": False, "collection": live, "points": source.count(), "layout": source.layout or "none"}
    target_name = f"{ctx.settings.collection}.v2" if live == ctx.settings.collection else f"{live}.v2"
    target = open_collection(ctx.settings, target_name)
    copied = pages = 0
    try:
        page: list[tuple[str, dict[str, Any], Any]] = []

        def flush() -> None:
            nonlocal copied
            if not page:
                return
            if target.layout is None:
                target.ensure_collection(len(page[0][2]))
            states = ctx.registry.get_many(str(payload.get("product_id")) for _id, payload, _v in page)
            records = []
            for point_id, payload, vector in page:
                state = states.get(str(payload.get("product_id")))
                first = state.images[0] if state and state.images else payload.get("image_url")
                flagged = {**payload, "primary": int(payload.get("image_url") == first)}
                records.append(PointRecord(point_id, vector, flagged, keywords=document_vector(payload)))
            target.upsert(records)
            copied += len(page)
            page.clear()

        for point in source.scroll(with_vectors=True):
            page.append(point)
            if len(page) >= REINDEX_PAGE:
                flush()
                pages += 1
                if interrupt_after is not None and pages >= interrupt_after:
                    raise RuntimeError(f"interrupted after {pages} page(s), as asked")
        flush()
        expected = source.count()
        if target.count() < expected:
            raise StoreError(f"the copy holds {target.count()} of {expected} points: not switching")
        if target.layout != NAMED:
            raise StoreError("the copy is not in the current layout: not switching")
    finally:
        target.close()
    # The switch: from here on, the live collection is the copy.
    ctx.close()
    switch_live(ctx.settings, target_name)
    return {"upgraded": True, "collection": target_name, "points": copied, "previous": live}
