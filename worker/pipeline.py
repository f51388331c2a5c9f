"""The stages as plain functions over a per-process :class:`WorkerContext`; the Celery tasks only call these.

fetch_stage:  Job -> PreparedImage (downloaded, hashed, decoded to model size; or a cached vector)
embed_stage:  PreparedImages -> EmbeddedPoints (one model call for the batch)
index_stage:  EmbeddedPoints -> upserted into the store with the product's current payload; outcomes counted
reconcile:    make a product's points match the registry (removed images, payload changes, deletes)
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from lookalike.config.settings import Settings, get_settings
from lookalike.state.conditions import Conditions
from lookalike.state.context import StateContext
from lookalike.state.duplicate_groups import Thresholds
from lookalike.state.errors import INDEX
from lookalike.state.failures import Failure
from lookalike.state.ledger import Outcome
from lookalike.state.messages import EmbeddedPoint, Job, PreparedImage, encode_vector, point_id_for
from lookalike.state.outcomes import FAILED, INDEXED, SUPERSEDED
from lookalike.state.process import process_cache
from lookalike.state.queues import INDEX_QUEUE, QUERY_QUEUE, queue_depth
from lookalike.state.registry import ProductState
from lookalike.state.search import QueryRejected, SearchRequest, SearchResponse
from lookalike.worker.cache import EmbeddingCache, content_hash
from lookalike.worker.decode import ImageRejected, decode_image, decode_slots, decode_transport, encode_for_transport
from lookalike.worker.diskspace import DiskGuard, StoreDiskFull, free_bytes, no_space
from lookalike.worker.duplicates import check_records
from lookalike.worker.embed import Embedder, ModelUnavailable
from lookalike.worker.fetch import AddressPolicy, FetchLimits, fetch_image, make_session
from lookalike.worker.fingerprint import TEXT_FILES, VISION_FILES, ModelId
from lookalike.worker.keywords import document_vector
from lookalike.worker.logs import OutcomeLogger
from lookalike.worker.model import ModelSpec
from lookalike.worker.ownership import (
    MISMATCH,
    CollectionModel,
    ModelBook,
    ModelMismatch,
    adopt,
    configured_text,
    configured_vision,
    forget_refusal,
    loadable,
    read_record,
    remember_refusal,
    write_record,
)
from lookalike.worker.prepare import QueryPreparer
from lookalike.worker.query import KeywordFallback, as_keyword_query, encode_request, search_request
from lookalike.worker.store import PointRecord, Sparse, StoreError, VectorStore, open_collection, open_store
from lookalike.worker.text import TextEmbedder

OPTIMIZE_AFTER_POINTS = 20_000
# An optimize of the embedded store holds the store owner until it ends (qdrant-edge keeps the GIL for the
# whole call: measured, a Python thread got 2 ticks in a 20 s optimize of 20,000 points, so a background thread
# answers nothing meanwhile), and takes minutes at 100,000 points. So it waits for LOOKALIKE_OPTIMIZE_QUIET
# seconds without a shopper's query; meanwhile queries search the new points unindexed (12 ms p95 at 100,000).
log = logging.getLogger(__name__)


class WorkerContext(StateContext):
    """The light context plus what a worker process needs to run stages; the heavy parts are built lazily."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.model_spec = Embedder.spec_from(settings)
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
        self._owner: CollectionModel | None = None  # the live collection's record, as the store owner knows it
        self._others: dict[str, VectorStore] = {}  # named collections (a reindex's shadow), store owner only
        self._caches: dict[str, EmbeddingCache] = {}
        # A refusal may be on record (status shows it) since the last batch written: this process's first batch
        # written, and the first after a refusal, clear it; the others cost no Redis call.
        self._refused = True
        # Monotonic time of the store owner's last search; a store owner that just started has not seen the
        # shoppers yet, so its start counts as one (a pending optimize waits for a quiet moment after a restart).
        self.last_query = time.monotonic()

    @cached_property
    def vision_id(self) -> ModelId:
        """The configured vision model's fingerprint: what this process's vectors are stamped with."""
        return configured_vision(self.settings)

    @property
    def cache(self) -> EmbeddingCache:
        """The configured model's embedding cache."""
        return self.cache_for(self.vision_id.fingerprint)

    def cache_for(self, fingerprint: str) -> EmbeddingCache:
        """Embeddings keyed by the model's fingerprint: another model (or the same directory with other files)
        never reads this one's vectors."""
        if fingerprint not in self._caches:
            self._caches[fingerprint] = EmbeddingCache(
                self.redis, self.settings.key_prefix, fingerprint, self.settings.embed_cache_ttl
            )
        return self._caches[fingerprint]

    @cached_property
    def models(self) -> ModelBook:
        return ModelBook(self.settings)

    def embedder_for(self, model: ModelId) -> Embedder:
        """The embedder of ``model``: the configured one, or the model a collection records, loaded from its
        directory when this machine holds exactly that model (else :class:`ModelUnavailable`)."""
        spec = loadable(model, self.vision_id, self.model_spec, VISION_FILES)
        if spec is None:
            raise ModelUnavailable(
                f"vision model {model.describe()} is not on this machine (this worker's own is "
                f"{self.vision_id.describe()})"
            )
        return Embedder.shared(spec)

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
            # Opening an existing embedded store maps its files and writes to them (tens of MiB): on a full disk
            # that is a SIGBUS, so say "disk full" instead.
            full = self.disk_guard.reading() if self.disk_guard is not None else None
            if full is not None:
                raise full
            self._store = open_store(self.settings)
        return self._store

    @cached_property
    def disk_guard(self) -> DiskGuard | None:
        """The free-space check before each write, for an embedded store (a server's disk is its own)."""
        if not self.settings.uses_embedded_store or self.settings.store_min_free_bytes <= 0:
            return None
        return DiskGuard(
            self.settings.qdrant_path,
            self.settings.store_min_free_bytes,
            Conditions(self.redis, self.settings.key_prefix),
            self.ledger,
            node=socket.gethostname(),
        )

    def check_store_space(self) -> None:
        """Raise :class:`~lookalike.worker.diskspace.StoreDiskFull` when a write must wait for space."""
        if self.disk_guard is not None:
            self.disk_guard.check()

    def disk_full(self, error: BaseException) -> StoreDiskFull:
        """A write the engine refused for want of space, as the disk-full condition (shared and counted)."""
        free = free_bytes(self.settings.qdrant_path)
        full = StoreDiskFull(self.settings.qdrant_path, free, self.settings.store_min_free_bytes)
        if self.disk_guard is not None:
            self.disk_guard.full(full)
        full.__cause__ = error
        return full

    def store_for(self, collection: str | None) -> VectorStore:
        """The live collection (None, or its name), or another one, opened once (store owner)."""
        if collection is None or collection == self.store.collection:
            return self.store
        if collection not in self._others:
            self._others[collection] = open_collection(self.settings, collection)
        return self._others[collection]

    def ready_store(self, dim: int, collection: str | None = None) -> VectorStore:
        """The store with its collection created (once per process)."""
        if collection is not None:
            store = self.store_for(collection)
            if store.layout is None:
                store.ensure_collection(dim)
            return store
        store = self.store
        if self._store_ready_dim != dim:
            store.ensure_collection(dim)
            self._store_ready_dim = dim
        return store

    def owning_model(self, collection: str | None = None, *, fresh: bool = False) -> CollectionModel:
        """The models a collection belongs to (store owner): the live one's read once and kept (the store owner
        is the one that writes it; ``fresh`` reads it again), and a live collection without a record adopts the
        configured models. A named collection's is read as the model book reads it."""
        if collection is not None:
            record = read_record(self.settings, collection) if fresh else self.models.record(collection)
            if record is None:
                raise StoreError(f"collection {collection!r} has no model record")
            return record
        if self._owner is None or fresh:
            collection = self.store.collection
            record = read_record(self.settings, collection)
            if record is None:
                try:
                    points = self.store.count()
                except StoreError:
                    points = 0
                record = adopt(self.settings, collection, points)
            self._owner = record
        return self._owner

    def check_vectors(self, offered: set[str], jobs: int, collection: str | None = None) -> None:
        """Raise :class:`ModelMismatch` when the batch's vectors come from another model than the collection's
        (read again before refusing: the record may have changed since it was read)."""
        if not offered:
            return  # unstamped: a message from a worker older than the model records
        recorded = self.owning_model(collection).vision
        if offered != {recorded.fingerprint}:
            recorded = self.owning_model(collection, fresh=True).vision
        stranger = sorted(offered - {recorded.fingerprint})
        if stranger:
            mismatch = ModelMismatch(self.store_for(collection).collection, recorded.describe(), ", ".join(stranger))
            remember_refusal(self.redis, self.settings, mismatch, jobs)
            self._refused = True
            raise mismatch
        if self._refused:
            forget_refusal(self.redis, self.settings)
            self._refused = False

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
        for other in self._others.values():
            other.close()
        self._others.clear()
        self._owner = None
        self.models = ModelBook(self.settings)


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
    model = ctx.models.for_writing(job.collection, ctx.vision_id).fingerprint
    cached = ctx.cache_for(model).get(digest)
    if cached is not None:
        return PreparedImage(job, digest, vector=encode_vector(cached), timings=timings, model=model)
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
    made_by: dict[int, str] = {}
    # One model call per model: a batch holds one model's jobs, but a reindex's shadow jobs may share it.
    groups: dict[ModelId, list[int]] = {}
    for position, item in enumerate(to_embed):
        groups.setdefault(ctx.models.for_writing(item.job.collection, ctx.vision_id), []).append(position)
    for model, positions in groups.items():
        group = [to_embed[p] for p in positions]
        embed_started = time.perf_counter()
        embedded = ctx.embedder_for(model).embed([images[p] for p in positions])
        seconds = time.perf_counter() - embed_started
        ctx.ledger.count_embedding(dict(Counter(item.job.run_id for item in group)), seconds)
        for item, vector in zip(group, embedded, strict=True):
            vectors[id(item)] = encode_vector(vector)
            made_by[id(item)] = model.fingerprint
        ctx.cache_for(model.fingerprint).put_many(
            {item.sha256: vector for item, vector in zip(group, embedded, strict=True)}
        )
    return [
        EmbeddedPoint(
            job=item.job,
            sha256=item.sha256,
            vector=item.vector if item.vector is not None else vectors[id(item)],
            cached=item.cached,
            timings=item.waited(started),
            model=item.model if item.cached else made_by[id(item)],
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
    duplicate_pairs: int = 0
    redo: list[Job] = field(default_factory=list)  # jobs to embed again with the collection's model


def upsert(ctx: WorkerContext, store: VectorStore, records: list[PointRecord]) -> None:
    """One upsert; the engine's own "no space left on device" is the disk-full condition (the batch waits)."""
    try:
        store.upsert(records)
    except Exception as exc:
        if no_space(exc):
            raise ctx.disk_full(exc) from exc
        raise


def _screen_models(
    ctx: WorkerContext, points: Sequence[EmbeddedPoint], collection: str | None, report: IndexReport
) -> Sequence[EmbeddedPoint]:
    """The points the collection's model allows: those of the model a reindex replaced go to ``report.redo``;
    a batch with another model's vectors is refused whole (``model_mismatch``, one log line) and none is left."""
    previous = ctx.owning_model(collection).previous
    if previous:
        report.redo = [point.job for point in points if point.model == previous]
        points = [point for point in points if point.model != previous]
    try:
        ctx.check_vectors({point.model for point in points if point.model}, len(points), collection)
    except ModelMismatch as exc:
        log.error("refused a batch of %d point(s): %s", len(points), exc)
        fail_jobs(ctx, [point.job for point in points], INDEX, MISMATCH, str(exc))
        report.failed = len(points)
        return []
    return points


def _write(
    ctx: WorkerContext,
    records: list[PointRecord],
    outcomes: list[tuple[Job, Outcome]],
    before: dict[str, ProductState],
    collection: str | None,
    report: IndexReport,
) -> float:
    """The batch's one upsert, the duplicate check of its fresh points, and the reconcile of products that changed
    meanwhile; the upsert's seconds."""
    store = ctx.ready_store(len(records[0].vector), collection)
    upsert_started = time.perf_counter()
    upsert(ctx, store, records)
    upsert_seconds = time.perf_counter() - upsert_started
    # Duplicate listings: the fresh points against other products' points, one batched query; before the
    # reconcile below, so a point it deletes (its image removed meanwhile) leaves the pairs just found too.
    check_started = time.perf_counter()
    floor = Thresholds.from_settings(ctx.settings).floor
    report.duplicate_pairs = check_records(ctx.duplicates, store, records, floor)
    check_seconds = time.perf_counter() - check_started
    written = {job.product_id for job, outcome in outcomes if outcome.status == INDEXED}
    after = ctx.registry.get_many(written)
    report.reconciled = reconcile(ctx, store, [pid for pid, state in after.items() if state != before.get(pid)], after)
    ctx.ledger.batch_time("upsert", upsert_seconds, (job.run_id for job, _ in outcomes))
    ctx.ledger.batch_time("duplicates", check_seconds, (job.run_id for job, _ in outcomes))
    return upsert_seconds


def index_stage(ctx: WorkerContext, points: Sequence[EmbeddedPoint], collection: str | None = None) -> IndexReport:
    """Write the batch in one upsert, each point with its product's current payload, into the live collection
    (or the named one: a reindex's shadow).

    Points whose product was deleted, or whose image was removed, since the job was enqueued are dropped
    (``superseded``). If the registry changes while the upsert runs, the products concerned are reconciled
    afterwards, so a concurrent delete or image removal cannot leave an orphan behind. Vectors of another model
    than the collection's are refused, except those of the model a reindex just replaced (embedded in the
    seconds around the switch): their jobs are handed back (``redo``) to be embedded again with the new one.
    """
    started = time.time()
    report = IndexReport()
    if points:
        ctx.check_store_space()  # before anything is written or counted: a batch that must wait changes nothing
    points = _screen_models(ctx, points, collection, report)
    if not points:
        return report
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
        upsert_seconds = _write(ctx, records, outcomes, before, collection, report)
    ctx.ledger.record(outcome for _, outcome in outcomes)
    # An image that failed before (a full broker, a flaky CDN) and is indexed now is failed no more.
    ctx.failures.forget(job.point_id for job, outcome in outcomes if outcome.status == INDEXED)
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
    if records and collection is None:
        ctx.maybe_optimize(len(records))  # after the outcomes are counted: it can take a while
    return report


# ------------------------------------------------------------------------------------------------- query
def answer_query(ctx: WorkerContext, request: SearchRequest) -> SearchResponse:
    """Both halves of a query in one process: `lookalike search` when no worker is up, and the benchmarks.

    Every refusal comes out as a :class:`QueryRejected` with a reason (bad input, undecodable image, a download
    the fetch guard refused, a model the live collection does not belong to).
    """
    request = ctx.query_preparer.prepare(request.validate(max_image_bytes=ctx.settings.query_max_bytes))
    try:
        vector, model = encode_query(ctx, request)
    except KeywordFallback as fallback:  # words with no loadable text model: keywords only, and it says so
        answer = search_encoded(ctx, as_keyword_query(request), None, None)
        return replace(answer, note=fallback.note)
    return search_encoded(ctx, request, vector, model)


def _unloadable(recorded: ModelId, configured: ModelId, what: str, collection: str | None) -> QueryRejected:
    return QueryRejected(
        MISMATCH,
        f"{'the live collection' if collection is None else repr(collection)} belongs to {what} model "
        f"{recorded.describe()}, which this worker cannot load (its own is {configured.describe()}): queries are "
        "refused rather than compared across models",
    )


def encode_query(ctx: WorkerContext, request: SearchRequest) -> tuple[np.ndarray | None, str | None]:
    """The query's half that costs CPU and touches the network, for the encode task on the embedding pool:
    its vector, embedded with the model the live collection (or the one the request names) belongs to,
    whatever this worker's own model is, and that model's fingerprint, which the store owner checks."""
    request.validate(max_image_bytes=ctx.settings.query_max_bytes)
    if not request.needs_vector:
        return None, None
    try:
        record = ctx.models.for_collection(request.collection)
    except StoreError as exc:
        raise QueryRejected("unknown_collection", str(exc)) from exc
    if request.kind == "text":
        configured = configured_text(ctx.settings)
        text_spec = loadable(record.text, configured, ctx.text_spec, TEXT_FILES)
        if text_spec is None:
            # Words never need the vectors' space to match: with no loadable text model they run on keywords
            # (and say so) rather than being refused or compared across models.
            raise KeywordFallback(_unloadable(record.text, configured, "text", request.collection).detail)
        vector = encode_request(
            request,
            embedder=lambda: ctx.embedder,
            settings=ctx.settings,
            text_embedder=lambda: TextEmbedder.shared(text_spec),
        )
        return vector, record.text.fingerprint
    vision_spec = loadable(record.vision, ctx.vision_id, ctx.model_spec, VISION_FILES)
    if vision_spec is None:
        raise _unloadable(record.vision, ctx.vision_id, "vision", request.collection)
    vector = encode_request(request, embedder=lambda: Embedder.shared(vision_spec), settings=ctx.settings)
    return vector, record.vision.fingerprint


def search_encoded(
    ctx: WorkerContext, request: SearchRequest, vector: np.ndarray | None, model: str | None = None
) -> SearchResponse:
    """The query's half on the store owner: a search with the vector it is given, no download, no model.

    A vector stamped with another model than the collection's is refused (``model_mismatch``): its scores
    against the collection's vectors would mean nothing. One exception: a vector of the model of the collection
    a reindex just replaced (encoded in the seconds before the switch reached the encoder) is searched in that
    collection, which is kept until `lookalike reindex --drop-old`."""
    ctx.last_query = time.monotonic()
    collection = request.collection
    if vector is not None and model:
        kind = "text" if request.kind == "text" else "vision"
        try:
            record = ctx.owning_model(collection)
            if getattr(record, kind).fingerprint != model:
                record = ctx.owning_model(collection, fresh=True)
        except StoreError as exc:
            raise QueryRejected("unknown_collection", str(exc)) from exc
        recorded = getattr(record, kind)
        if recorded.fingerprint != model:
            replaced = ctx.models.record(record.replaces) if record.replaces else None
            if replaced is None or getattr(replaced, kind).fingerprint != model:
                raise QueryRejected(
                    MISMATCH,
                    f"the query was embedded with {kind} model {model}, but the collection belongs to "
                    f"{recorded.describe()}",
                )
            collection = record.replaces
    return search_request(request, vector, store=ctx.store_for(collection))


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
    stale_products: dict[str, str] = {}
    for product_id in ids:
        state = states.get(product_id)
        if state is None or state.deleted:
            ctx.duplicates.forget_products([product_id])
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
                stale_products[point_id] = product_id
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
    ctx.duplicates.forget_points(stale_products)  # a removed image leaves its pairs
    return changed


def reconcile_stage(ctx: WorkerContext, product_ids: Sequence[str]) -> int:
    """The store-side half of a catalogue change (payload update, removed images, delete)."""
    started = time.perf_counter()
    ctx.check_store_space()
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


def audit_stage(ctx: WorkerContext, *, page: int = 1000, collection: str | None = None) -> AuditReport:
    """Make the store (the live collection, or the named one) converge on the registry, whatever was lost (the
    queue, the registry or the store).

    Points whose product is not registered, is deleted, or no longer lists the point's image are deleted; points
    whose product fields differ from the registry's get them; the registered images that have no point are
    reported (the caller enqueues them). Reads the store once and the registry once, in pages.
    """
    report = AuditReport()
    store = ctx.store_for(collection)
    present: set[str] = set()
    orphans: set[str] = set()
    outdated: dict[str, dict[str, Any]] = {}
    batch: list[tuple[str, dict[str, Any]]] = []
    stale_products: dict[str, str] = {}

    def settle_batch() -> None:
        states = ctx.registry.get_many(str(payload.get("product_id")) for _id, payload in batch)
        stale = []
        for point_id, payload in batch:
            product_id = str(payload.get("product_id"))
            state = states.get(product_id)
            if state is None or not state.wants(str(payload.get("image_url"))):
                stale.append(point_id)
                stale_products[point_id] = product_id
                orphans.add(product_id)
            else:
                present.add(point_id)
                if any(payload.get(key) != value for key, value in state.payload.items()):
                    outdated[product_id] = state.payload
        if stale:
            store.delete_ids(stale)
            ctx.duplicates.forget_points(stale_products)
            stale_products.clear()
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


def switch_stage(ctx: WorkerContext, collection: str) -> dict[str, Any]:
    """Make ``collection`` the live one (store owner: no query runs meanwhile). Idempotent."""
    from lookalike.worker.store import live_collection, switch_live

    previous = live_collection(ctx.settings)
    if previous != collection:
        ctx.close()
        switch_live(ctx.settings, collection)
    return {"collection": collection, "previous": previous, "switched": previous != collection}


def drop_stage(ctx: WorkerContext, collection: str) -> dict[str, Any]:
    """Delete a collection that is not the live one, and its model record (store owner: it may hold it open)."""
    import shutil

    from lookalike.worker.ownership import delete_record
    from lookalike.worker.store import live_collection

    if collection == live_collection(ctx.settings):
        raise StoreError(f"collection {collection!r} is the live one: not dropping it")
    other = ctx._others.pop(collection, None)
    if other is not None:
        other.close()
    settings = ctx.settings
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        client = QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=int(settings.qdrant_timeout) or 1)
        try:
            dropped = bool(client.collection_exists(collection) and client.delete_collection(collection))
        finally:
            client.close()
    else:
        directory = (
            settings.qdrant_path / "local" / collection
            if settings.embedded_store == "local"
            else settings.qdrant_path / collection
        )
        dropped = directory.exists()
        shutil.rmtree(directory, ignore_errors=True)
    delete_record(settings, collection)
    return {"collection": collection, "dropped": dropped}


def reindex_stage(ctx: WorkerContext, *, interrupt_after: int | None = None) -> dict[str, Any]:
    """Upgrade the live collection to the current layout: copy every point's stored vector into a new
    collection with its keyword vector and flags added, then switch the live collection to it.

    No download and no embedding: the vectors are the stored ones. Queries see the old collection until the
    switch, which happens only once the copy holds every point. Upserts are idempotent, so an interrupted run
    (``interrupt_after`` pages, for the tests) is simply run again. Nothing to do on a current collection.
    """
    from lookalike.worker.store import LEGACY, NAMED, live_collection, switch_live

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
    # The copy holds the same vectors: it belongs to the same models.
    write_record(ctx.settings, target_name, ctx.owning_model())
    # The switch: from here on, the live collection is the copy.
    ctx.close()
    switch_live(ctx.settings, target_name)
    return {"upgraded": True, "collection": target_name, "points": copied, "previous": live}
