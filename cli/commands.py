"""What the `lookalike` subcommands do, kept apart from argument parsing (main.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lookalike.config.settings import Settings, get_settings
from lookalike.producer.catalog import CatalogReport
from lookalike.state.context import StateContext, current_state
from lookalike.state.search import Filters, QueryRejected, SearchRequest, SearchResponse
from lookalike.worker.embedded import Runtime, redis_answers, resolve_broker

Note = Callable[[str], None]


NO_BROKER_EXIT = 3


class BrokerUnreachable(Exception):
    """Nothing answers at the broker URL: every command says so in one line and exits with NO_BROKER_EXIT."""


def use_broker(note: Note, *, start: bool = True, share: bool = False) -> Runtime:
    """This command's broker, resolved the way every command resolves it (see ``resolve_broker``), and checked.

    An embedded broker this command started stops when the command ends; ``share`` (long-running commands)
    lets other commands use it meanwhile."""
    import atexit

    runtime = resolve_broker(start=start, share=share)
    atexit.register(runtime.close)
    for message in runtime.notes:
        note(message)
    require_broker(runtime.settings)
    return runtime


def state_context() -> StateContext:
    """This command's light context (settings, Redis, ledger, registry, failures): no model, no store."""
    return current_state()


def require_broker(settings: Settings) -> str:
    """The broker URL, once something answers there; else a one-line error saying where it looked."""
    from lookalike.worker.embedded import broker_problem

    url: str = settings.broker_url.get_secret_value()
    problem = broker_problem(url)
    if problem is not None:
        # A refused connection needs no explanation; a TLS failure or a stranger on the port does.
        why = "" if "refused" in problem.lower() else f" ({problem})"
        raise BrokerUnreachable(
            f"no broker answers at {_safe_url(url)}{why}: start Redis (or `docker-compose up -d redis`), "
            "or set LOOKALIKE_BROKER_URL (unset, lookalike runs an embedded one)"
        )
    return url


def _now_version() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------------------------------------ ingest
@dataclass
class WaitResult:
    """How a waited-for run ended."""

    indexed: int
    failed: int
    superseded: int
    failed_by_reason: dict[str, int]
    cache_hits: int
    embed_calls: int
    seconds: float
    images_per_second: float


@dataclass
class IngestSummary:
    """What `lookalike ingest` reports (``--json`` prints :meth:`to_data`)."""

    run_id: str
    source: str
    encoding: str
    version: int
    rows_read: int
    rows_selected: int
    malformed_lines: int
    rows_skipped: dict[str, int]
    products: dict[str, int]
    images_enqueued: int
    image_entries: dict[str, int]
    shared_placeholders: Any
    reconciled_products: int
    pruned: int | None
    backpressure_seconds: float
    result: WaitResult | None = field(default=None)

    def to_data(self) -> dict[str, Any]:
        data = asdict(self)
        if self.result is None:
            del data["result"]
        return data


class IngestSession:
    """Broker (maybe embedded), workers (maybe local), and the run of one `lookalike ingest`."""

    def __init__(self, *, wait: bool, quiet: bool, note: Note) -> None:
        self.want_wait = wait
        self.quiet = quiet
        self.note = note
        self.runtime: Runtime | None = None
        self.group: Any = None
        self.waiting = wait

    def __enter__(self) -> IngestSession:
        self.runtime = resolve_broker()
        for message in self.runtime.notes:
            self.note(message)
        require_broker(self.runtime.settings)
        from lookalike.worker.app import ALL_QUEUES, app
        from lookalike.worker.client import CeleryPublisher, live_workers

        self.ctx = state_context()
        self.publisher = CeleryPublisher(app, self.ctx.redis)
        # With an embedded broker, queued jobs would die with this command: it always waits.
        self.waiting = self.want_wait or self.runtime.broker_is_embedded
        workers = live_workers(app)
        if self.waiting and not workers:
            _check_model(self.ctx.settings)
            self.group = start_local_workers(self.ctx.settings, self.note)
        elif not workers:
            self.note("no worker is running: the jobs wait in the queue until you start `lookalike worker`")
        else:
            consumed = {q for queues in workers.values() for q in queues}
            missing = [q for q in ALL_QUEUES if q not in consumed]
            if missing:
                self.note(f"no running worker consumes {', '.join(missing)}; start one with `lookalike worker`")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.group is not None:
                self.group.stop()
        finally:
            if self.runtime is not None:
                self.runtime.close()

    def run(self, report: CatalogReport, *, version: int | None, full: bool, prune: bool) -> IngestSummary:
        from lookalike.producer.enqueue import Backpressure, carry_out
        from lookalike.producer.sync import plan_catalog

        ctx = self.ctx
        version = version or _now_version()
        run_id = ctx.ledger.start_run("ingest", report.source, status="enqueuing", version=version)
        plan, pruned = plan_catalog(ctx.registry, report.products, version, run_id, full=full, prune=prune)
        ctx.ledger.add(
            run_id,
            {
                "rows_read": report.rows_read,
                "products": len(report.products),
                "rows_skipped": sum(report.skipped.values()),
                **{f"skipped:{reason}": count for reason, count in report.skipped.items()},
            },
            global_too=False,
        )

        def waiting_for_room(depth: int) -> None:
            if not backpressure.waited:
                self.note(f"{depth} jobs waiting in the fetch queue: pausing until workers catch up")

        backpressure = Backpressure(ctx.settings.fetch_high_water, on_wait=waiting_for_room)
        with _progress(self.quiet or not plan.jobs) as bar:
            task = bar.add_task("enqueueing", total=len(plan.jobs))

            carry_out(
                plan,
                self.publisher,
                ctx.registry,
                backpressure,
                run_id=run_id,
                ledger=ctx.ledger,
                on_published=lambda count: bar.advance(task, count),
            )
        ctx.ledger.set_meta(run_id, status="enqueued")
        if not plan.jobs and not plan.reconcile:
            ctx.ledger.set_meta(run_id, finished_at=time.time())
        images = report.images
        return IngestSummary(
            run_id=run_id,
            source=report.source,
            encoding=report.encoding,
            version=version,
            rows_read=report.rows_read,
            rows_selected=report.rows_selected,
            malformed_lines=report.malformed_lines,
            rows_skipped=dict(report.skipped),
            products={"total": len(report.products), **dict(plan.outcomes)},
            images_enqueued=len(plan.jobs),
            image_entries={
                "entries": images.entries,
                "kept": images.kept,
                "placeholders": images.placeholders,
                "duplicates": images.duplicates,
                "invalid": images.invalid,
                "empty": images.empty,
                "in_skipped_rows": images.in_skipped_rows,
            },
            shared_placeholders=report.shared_placeholders,
            reconciled_products=len(plan.reconcile),
            pruned=pruned,
            backpressure_seconds=round(backpressure.waited, 3),
        )

    def wait_until_done(self, run_id: str, total: int, *, progress: bool) -> WaitResult:
        from lookalike.state.ledger import finished, is_complete
        from lookalike.worker.app import app
        from lookalike.worker.client import optimize_store

        ledger = self.ctx.ledger
        started = time.monotonic()
        with _progress(not progress) as bar:
            task = bar.add_task("indexing", total=total)
            while True:
                run = ledger.run(run_id) or {}
                bar.update(
                    task,
                    completed=finished(run),
                    description=f"indexed {run.get('indexed', 0)}, failed {run.get('failed', 0)}",
                )
                if is_complete(run):
                    break
                if self.group is not None and self.group.dead():
                    spec, code = self.group.dead()[0]
                    raise RuntimeError(f"the local {spec.name} worker exited with code {code}")
                time.sleep(0.25)
        seconds = time.monotonic() - started
        if finished(ledger.run(run_id) or {}) and self.ctx.settings.uses_embedded_store:
            # Build the search index over the new points now, while nobody waits on a query.
            optimize_store(app)
        run = ledger.run(run_id) or {}
        ledger.set_meta(run_id, finished_at=time.time())
        return WaitResult(
            indexed=int(run.get("indexed", 0)),
            failed=int(run.get("failed", 0)),
            superseded=int(run.get("superseded", 0)),
            failed_by_reason={k.split(":", 1)[1]: int(v) for k, v in run.items() if k.startswith("failed:")},
            cache_hits=int(run.get("cache_hits", 0)),
            embed_calls=int(run.get("embed_calls", 0)),
            seconds=round(seconds, 3),
            images_per_second=round(finished(run) / seconds, 2) if seconds > 0 else 0.0,
        )


def _progress(disabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=disabled,
        transient=False,
    )


# ------------------------------------------------------------------------------------------------ worker
def start_local_workers(settings: Settings, note: Note) -> Any:
    """Workers for the duration of one command; their log (job outcomes included) goes to a file."""
    from lookalike.worker.runner import WorkerGroup, parse_queues, plan_pools

    pools = plan_pools(settings, parse_queues(None), concurrency=None, fetch_threads=None)
    log_path = settings.qdrant_path.parent / "local-workers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    group = WorkerGroup(pools, loglevel="WARNING", log_path=log_path)
    group.start()
    described = ", ".join(f"{p.name} ({p.pool} x{p.concurrency})" for p in pools)
    note(f"no worker is running: started local workers for this command: {described}; their log: {log_path}")
    return group


def start_worker(
    *, queues: str | None, concurrency: int | None, fetch_threads: int | None, loglevel: str, note: Note
) -> int:
    from lookalike.state.queues import INDEX_QUEUE, QUERY_QUEUE
    from lookalike.worker.runner import WorkerGroup, parse_queues, plan_pools
    from lookalike.worker.store import StoreLocked, open_store

    settings = get_settings()
    url = require_broker(settings)
    chosen = parse_queues(queues)
    if settings.uses_embedded_store and chosen & {INDEX_QUEUE, QUERY_QUEUE}:
        try:
            open_store(settings, lock_wait=0).close()
        except StoreLocked:
            if queues:
                raise
            note(
                f"the embedded store {settings.qdrant_path} is owned by another worker: this one runs fetch and "
                "embed only (use a Qdrant server to run several store workers)"
            )
            chosen -= {INDEX_QUEUE, QUERY_QUEUE}
    _check_model(settings)
    pools = plan_pools(settings, chosen, concurrency=concurrency, fetch_threads=fetch_threads)
    group = WorkerGroup(pools, loglevel=loglevel)
    group.start(handle_signals=True)
    note(
        "started "
        + ", ".join(f"{p.name} pool ({p.pool} x{p.concurrency}) on {','.join(p.queues)}" for p in pools)
        + f" against {_safe_url(url)}; Ctrl-C stops them"
    )
    return group.supervise()


def _check_model(settings: Settings) -> None:
    """Fail before starting anything when the model cannot load (offline without a local directory...)."""
    from lookalike.worker.embed import ModelSpec, get_embedder

    get_embedder(ModelSpec.from_settings(settings))


def _safe_url(url: str) -> str:
    """A broker URL fit for printing: no password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# ------------------------------------------------------------------------------------------------ search
class QueryFailed(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def image_request(image: str, *, k: int, offset: int, filters: Filters, max_bytes: int) -> SearchRequest:
    """A search request for an image path or an http(s) URL (the file is read here, by the user's command:
    a worker never reads a path a caller chose)."""
    if image.startswith(("http://", "https://")):
        return SearchRequest(image_url=image, k=k, offset=offset, filters=filters)
    path = Path(image)
    if not path.is_file():
        raise QueryFailed(f"{image}: no such file (give an image path or an http(s) URL)")
    if path.stat().st_size > max_bytes:
        raise QueryFailed(f"{image}: larger than {max_bytes} bytes (LOOKALIKE_QUERY_MAX_BYTES)")
    return SearchRequest(image=path.read_bytes(), k=k, offset=offset, filters=filters)


def run_query(request: SearchRequest, *, timeout: float | None, note: Note) -> SearchResponse:
    """Send the request to a query worker through the broker; with no worker at all, answer in this process."""
    settings = get_settings()
    try:
        request.validate(max_image_bytes=settings.query_max_bytes)
    except QueryRejected as exc:
        raise QueryFailed(f"query refused: {exc}") from None
    timeout = timeout or settings.query_timeout
    url = settings.broker_url.get_secret_value()
    if redis_answers(url):
        from celery.exceptions import TimeoutError as CeleryTimeout

        from lookalike.state.queues import ENCODE_QUEUE, QUERY_QUEUE
        from lookalike.worker.app import app
        from lookalike.worker.client import ask_workers, live_workers

        workers = live_workers(app)
        consumed = {queue for queues in workers.values() for queue in queues}
        if QUERY_QUEUE in consumed:
            if request.needs_vector and ENCODE_QUEUE not in consumed:
                raise QueryFailed(
                    "no running worker encodes queries (the lookalike.encode queue); start one with "
                    "`lookalike worker --queues embed,encode`",
                    3,
                )
            try:
                answer = ask_workers(app, request, timeout=timeout)
                if answer.get("error") == "store_error":
                    raise QueryFailed(str(answer.get("detail")), 3)
                return SearchResponse.from_data(answer)
            except CeleryTimeout:
                raise QueryFailed(
                    f"no worker answered the query within {timeout:g}s; is the worker on the query queue busy or "
                    "stuck? (start one with `lookalike worker --queues query,index`)",
                    3,
                ) from None
            except QueryRejected as exc:
                raise QueryFailed(f"query refused: {exc}") from None
        if workers:
            raise QueryFailed(
                "workers are running but none consumes the query queue; start one with "
                "`lookalike worker --queues query,index`",
                3,
            )
    elif settings.broker_url_is_set:
        raise QueryFailed(f"no broker answers at {_safe_url(url)} (LOOKALIKE_BROKER_URL)", 3)
    note("no worker is running: answering in this process")
    return answer_in_process(request)


def answer_in_process(request: SearchRequest) -> SearchResponse:
    from lookalike.worker import pipeline
    from lookalike.worker.embed import ModelUnavailable
    from lookalike.worker.store import StoreError

    ctx = pipeline.current_context()
    try:
        return pipeline.answer_query(ctx, request)
    except QueryRejected as exc:
        raise QueryFailed(f"query refused: {exc}") from None
    except (StoreError, ModelUnavailable) as exc:
        raise QueryFailed(str(exc), 3) from None
    finally:
        pipeline.reset_context()


# ------------------------------------------------------------------------------------------------ status
def _run_summary(run: dict[str, Any]) -> dict[str, Any]:
    from lookalike.state.ledger import STAGES, finished, is_complete

    enqueued = int(run.get("enqueued", 0))
    done = finished(run)
    created = float(run.get("created", time.time()))
    end = float(run.get("finished_at") or time.time())
    elapsed = max(end - created, 1e-9)
    rate = done / elapsed if done else 0.0
    complete = is_complete(run)
    return {
        "run_id": run["run_id"],
        "kind": run.get("kind"),
        "source": run.get("source"),
        "status": "done" if complete else str(run.get("status", "unknown")),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "enqueued": enqueued,
        "indexed": int(run.get("indexed", 0)),
        "failed": int(run.get("failed", 0)),
        "superseded": int(run.get("superseded", 0)),
        "skipped_rows": int(run.get("rows_skipped", 0)),
        "failed_by_reason": {k.split(":", 1)[1]: int(v) for k, v in run.items() if k.startswith("failed:")},
        "cache_hits": int(run.get("cache_hits", 0)),
        "embed_calls": int(run.get("embed_calls", 0)),
        "progress": round(done / enqueued, 4) if enqueued else 1.0,
        "images_per_second": round(rate, 2),
        "eta_seconds": None if complete or not rate else round((enqueued - done) / rate, 1),
        "stage_seconds": {stage: round(float(run.get(f"seconds:{stage}", 0.0)), 3) for stage in STAGES},
    }


def collect_status(run_id: str | None, runs: int) -> dict[str, Any]:
    from lookalike.state.queues import ALL_QUEUES, oldest_age, queue_depth
    from lookalike.worker.app import app
    from lookalike.worker.client import live_workers

    ctx = state_context()
    settings = ctx.settings
    require_broker(settings)
    ids = [run_id] if run_id else ctx.ledger.run_ids(runs)
    found = []
    for rid in ids:
        run = ctx.ledger.run(rid)
        if run is None:
            if run_id:
                raise LookupError(f"no run {run_id!r} (runs are kept {settings.run_ttl}s)")
            continue
        found.append(_run_summary(run))
    stats = ctx.ledger.stats()
    return {
        "runs": found,
        "queues": {
            queue: {"depth": queue_depth(ctx.redis, queue), "oldest_age_seconds": _round(oldest_age(ctx.redis, queue))}
            for queue in ALL_QUEUES
        },
        "workers": live_workers(app),
        "events": {name.split(":", 1)[1]: value for name, value in stats.items() if name.startswith("events:")},
        "failures_recorded": ctx.failures.count(),
        "products_registered": ctx.registry.count(),
        "model": _model_in_effect(settings),
        "collection_model": collection_ownership(ctx),
    }


def _model_in_effect(settings: Settings) -> dict[str, Any]:
    """The models, execution providers and threads an embedding process started here would use."""
    from lookalike.worker.embed import ModelUnavailable, onnx_runtime_in_effect

    found: dict[str, Any] = {
        "vision": str(settings.model_dir or settings.model),
        "text": str(settings.text_model_dir or settings.text_model),
    }
    try:
        runtime = onnx_runtime_in_effect(settings)
    except ModelUnavailable as exc:
        return {**found, "error": str(exc)}
    return {
        **found,
        "providers": list(runtime.providers),
        "threads_per_process": runtime.threads,
        "embedding_processes": runtime.processes,
        "usable_cpus": runtime.usable_cpus,
    }


def collection_ownership(ctx: StateContext) -> dict[str, Any]:
    """Which models the live collection belongs to, which ones are configured here, where they differ, and the
    last batch the store owner refused for coming from another model."""
    from lookalike.worker.ownership import configured_models, last_refusal, read_record
    from lookalike.worker.store import StoreError, live_collection

    settings = ctx.settings
    collection = live_collection(settings)
    configured = configured_models(settings)
    found: dict[str, Any] = {
        "collection": collection,
        "configured": {"vision": configured.vision.to_data(), "text": configured.text.to_data()},
        "recorded": None,
        "mismatch": [],
        "refused": last_refusal(ctx.redis, settings),
    }
    try:
        record = read_record(settings, collection)
    except StoreError as exc:
        return {**found, "error": str(exc)}
    if record is not None:
        found["recorded"] = record.to_data()
        for kind in ("vision", "text"):
            recorded, mine = getattr(record, kind), getattr(configured, kind)
            if recorded.fingerprint != mine.fingerprint:
                found["mismatch"].append(
                    f"{kind}: the collection belongs to {recorded.describe()}, this machine's setting is "
                    f"{mine.describe()}"
                )
    refused = found["refused"]
    if refused:
        found["mismatch"].append(
            f"a worker's vectors were refused: {refused['jobs']} job(s), last at "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(refused['last_at']))}: {refused['reason']}"
        )
    return found


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ------------------------------------------------------------------------------------------- operations
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def start_flower(port: int, address: str | None, note: Note) -> None:
    """Replace this process with Flower on the lookalike app; the login travels in FLOWER_BASIC_AUTH."""
    import os
    import sys

    settings = get_settings()
    address = address or settings.flower_address
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    if auth and ":" not in auth:
        raise RuntimeError("LOOKALIKE_FLOWER_BASIC_AUTH must be user:password")
    if not auth and address not in LOOPBACK and not settings.flower_allow_unauthenticated:
        raise RuntimeError(
            f"refusing to serve Flower on {address} without a login: set LOOKALIKE_FLOWER_BASIC_AUTH=user:password "
            "(or LOOKALIKE_FLOWER_ALLOW_UNAUTHENTICATED=true if something in front of it authenticates)"
        )
    url = require_broker(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
    note(f"Flower on http://{address}:{port}/ ({'basic auth' if auth else 'NO LOGIN'}) for {_safe_url(url)}")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "lookalike.worker.app",
        "flower",
        f"--port={port}",
        f"--address={address}",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def serve_metrics_forever(address: str, port: int, note: Note) -> None:
    import signal
    import threading

    from lookalike.state.queues import ALL_QUEUES
    from lookalike.worker.metrics import serve_metrics

    ctx = state_context()
    require_broker(ctx.settings)
    server = serve_metrics(ctx, ALL_QUEUES, address, port)
    note(f"Prometheus metrics on http://{address}:{port}/metrics")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


# ------------------------------------------------------------------------------------------------ events
def run_listener(consumer: str | None, stop_when_idle: float | None, batch: int, note: Note) -> None:
    import signal
    import socket
    import threading

    from lookalike.producer.enqueue import Backpressure
    from lookalike.producer.listener import EventListener
    from lookalike.worker.app import app
    from lookalike.worker.client import CeleryPublisher

    ctx = state_context()
    settings = ctx.settings
    require_broker(settings)
    listener = EventListener(
        ctx.redis,
        stream=settings.events_stream,
        group=settings.events_group,
        consumer=consumer or socket.gethostname(),
        registry=ctx.registry,
        ledger=ctx.ledger,
        publisher=CeleryPublisher(app, ctx.redis),
        backpressure=Backpressure(settings.fetch_high_water),
        rejected_key=settings.key("events", "rejected"),
        claim_idle=settings.events_claim_idle,
        batch=batch,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    note(f"listening on stream {settings.events_stream} (group {settings.events_group}, consumer {listener.consumer})")

    def report(batch: Any) -> None:
        outcomes = ", ".join(f"{n} {name}" for name, n in sorted(batch.outcomes.items()))
        rejected = sum(batch.rejected.values())
        note(
            f"{batch.entries} events: {outcomes or 'nothing to do'}; {batch.jobs} images enqueued; {rejected} rejected"
        )

    listener.run(stop, stop_when_idle=stop_when_idle, on_batch=report)


def publish_events_file(file: str, note: Note) -> dict[str, Any]:
    import sys

    from lookalike.producer.events import EventRejected, parse_event, publish_event

    ctx = state_context()
    stream = ctx.settings.events_stream
    published = rejected = 0
    # Bytes, not text: a line that is not UTF-8 is that line's error (invalid_json), not the end of the file.
    handle = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                publish_event(parse_event(line), client=ctx.redis, stream=stream)
                published += 1
            except EventRejected as exc:
                rejected += 1
                note(f"line {number}: not published: {exc}")
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    return {"stream": stream, "published": published, "rejected": rejected}


def list_rejected_events() -> list[dict[str, Any]]:
    from lookalike.producer.listener import rejected_events

    ctx = state_context()
    return rejected_events(ctx.redis, ctx.settings.key("events", "rejected"))


# ---------------------------------------------------------------------------------------------- failures
def list_failures(reason: str | None, limit: int | None) -> list[dict[str, Any]]:
    return [failure.public() for failure in state_context().failures.entries(reason, limit)]


def retry_failures(reason: str | None, note: Note) -> dict[str, Any]:
    """Re-enqueue failed images whose product still wants them, as a new run."""
    from lookalike.producer.enqueue import Backpressure, carry_out
    from lookalike.producer.sync import plan_retries
    from lookalike.worker.app import app
    from lookalike.worker.client import CeleryPublisher

    ctx = state_context()
    taken = ctx.failures.take(reason)
    run_id = ctx.ledger.start_run("retry", f"failures{':' + reason if reason else ''}", status="enqueuing")
    plan, dropped = plan_retries(ctx.registry, taken, run_id)
    carry_out(
        plan,
        CeleryPublisher(app, ctx.redis),
        ctx.registry,
        Backpressure(ctx.settings.fetch_high_water),
        run_id=run_id,
        ledger=ctx.ledger,
    )
    ctx.ledger.set_meta(run_id, status="enqueued")
    return {"run_id": run_id, "requeued": len(plan.jobs), "dropped": dropped}


# --------------------------------------------------------------------------------------------- reconcile
def reconcile_index(catalog: CatalogReport | None, *, timeout: float, note: Note) -> dict[str, Any]:
    """Converge the index whatever was lost: the registry (from the catalogue, pruning what it no longer
    lists), then the store against the registry, by the store owner (orphan points deleted, payloads brought
    up to date), then the registered images with no point are enqueued. With no worker running, the store is
    audited in this process."""
    from lookalike.producer.enqueue import Backpressure, carry_out
    from lookalike.producer.sync import plan_catalog, plan_missing
    from lookalike.state.queues import INDEX_QUEUE
    from lookalike.worker.app import app
    from lookalike.worker.client import CeleryPublisher, live_workers

    ctx = state_context()
    run_id = ctx.ledger.start_run("reconcile", catalog.source if catalog else "store", status="enqueuing")
    report: dict[str, Any] = {"run_id": run_id}
    if catalog is not None:
        # Only the registry is taken from this plan: the audit below finds what the store lacks or must lose.
        plan, pruned = plan_catalog(ctx.registry, catalog.products, _now_version(), run_id, prune=True)
        ctx.registry.settle(plan.settle)
        report["catalog"] = {"products": len(catalog.products), "pruned": pruned, **dict(plan.outcomes)}
    workers = live_workers(app)
    if any(INDEX_QUEUE in queues for queues in workers.values()):
        from lookalike.worker.client import audit_store

        audited = audit_store(app, timeout=timeout)
    else:
        from lookalike.worker import pipeline

        note("no store worker is running: auditing the store in this process")
        try:
            audited = pipeline.audit_stage(pipeline.current_context()).to_data()
        finally:
            pipeline.reset_context()
    missing = plan_missing(ctx.registry, [(str(p), str(u)) for p, u in audited["missing"]], run_id)
    publisher = CeleryPublisher(app, ctx.redis)
    backpressure = Backpressure(ctx.settings.fetch_high_water)
    carry_out(missing, publisher, ctx.registry, backpressure, run_id=run_id, ledger=ctx.ledger)
    ctx.ledger.set_meta(run_id, status="enqueued")
    if not missing.jobs:
        ctx.ledger.set_meta(run_id, finished_at=time.time())
    elif not workers:
        note(f"{len(missing.jobs)} images wait in the queue until you start `lookalike worker`")
    report.update(
        {
            "store_points": audited["points_seen"],
            "orphan_points_deleted": audited["orphan_points_deleted"],
            "orphan_products": audited["orphan_products"],
            "payloads_updated": audited["payloads_updated"],
            "missing_images_enqueued": len(missing.jobs),
        }
    )
    return report
