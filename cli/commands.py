"""What the `lookalike` subcommands do, kept apart from argument parsing (main.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lookalike.app.broker import require_broker, safe_url
from lookalike.app.gateway import Gateway
from lookalike.config.settings import Settings, get_settings
from lookalike.producer.catalog import CatalogReport
from lookalike.state.context import StateContext, current_state
from lookalike.state.errors import BackendUnavailable, Misconfigured, ModelUnavailable
from lookalike.worker.embedded import Runtime, resolve_broker

Note = Callable[[str], None]


def gateway(settings: Settings, note: Note) -> Gateway:
    """This command's gateway to the workers (or to this process, when none runs)."""
    return Gateway(settings, note=note)


def state_context() -> StateContext:
    """This command's light context (settings, Redis, ledger, registry, failures): no model, no store."""
    return current_state()


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
        from lookalike.state.queues import ALL_QUEUES

        self.ctx = state_context()
        self.gateway = gateway(self.ctx.settings, self.note)
        self.publisher = self.gateway.publisher(self.ctx.redis)
        # With an embedded broker, queued jobs would die with this command: it always waits.
        self.waiting = self.want_wait or self.runtime.broker_is_embedded
        workers = self.gateway.live_workers()
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
                    raise BackendUnavailable(f"the local {spec.name} worker exited with code {code}")
                time.sleep(0.25)
        seconds = time.monotonic() - started
        if finished(ledger.run(run_id) or {}) and self.ctx.settings.uses_embedded_store:
            # Build the search index over the new points now, while nobody waits on a query.
            self.gateway.optimize()
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
        except StoreLocked as exc:
            if queues:  # the store queues were asked for by name: the user has to choose others
                raise Misconfigured(str(exc)) from exc
            note(
                f"the embedded store {settings.qdrant_path} is owned by another worker: this one runs fetch and "
                "embed only (use a Qdrant server to run several store workers)"
            )
            chosen -= {INDEX_QUEUE, QUERY_QUEUE}
    try:
        _check_model(settings)
    except ModelUnavailable as exc:  # a worker without its model: LOOKALIKE_MODEL_DIR (or the network) to fix
        raise Misconfigured(str(exc)) from exc
    pools = plan_pools(settings, chosen, concurrency=concurrency, fetch_threads=fetch_threads)
    group = WorkerGroup(pools, loglevel=loglevel)
    group.start(handle_signals=True)
    note(
        "started "
        + ", ".join(f"{p.name} pool ({p.pool} x{p.concurrency}) on {','.join(p.queues)}" for p in pools)
        + f" against {safe_url(url)}; Ctrl-C stops them"
    )
    return group.supervise()


def _check_model(settings: Settings) -> None:
    """Fail before starting anything when the model cannot load (offline without a local directory...)."""
    from lookalike.worker.embed import Embedder

    Embedder.for_settings(settings)


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
        "workers": Gateway(settings).live_workers(),
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
        raise Misconfigured("LOOKALIKE_FLOWER_BASIC_AUTH must be user:password")
    if not auth and address not in LOOPBACK and not settings.flower_allow_unauthenticated:
        raise Misconfigured(
            f"refusing to serve Flower on {address} without a login: set LOOKALIKE_FLOWER_BASIC_AUTH=user:password "
            "(or LOOKALIKE_FLOWER_ALLOW_UNAUTHENTICATED=true if something in front of it authenticates)"
        )
    url = require_broker(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
    note(f"Flower on http://{address}:{port}/ ({'basic auth' if auth else 'NO LOGIN'}) for {safe_url(url)}")
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
    try:
        server = serve_metrics(ctx, ALL_QUEUES, address, port)
    except OSError as exc:  # the port is taken, the address is not this machine's...
        raise Misconfigured(str(exc)) from exc
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
        publisher=gateway(settings, note).publisher(ctx.redis),
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

    ctx = state_context()
    taken = ctx.failures.take(reason)
    run_id = ctx.ledger.start_run("retry", f"failures{':' + reason if reason else ''}", status="enqueuing")
    plan, dropped = plan_retries(ctx.registry, taken, run_id)
    carry_out(
        plan,
        gateway(ctx.settings, note).publisher(ctx.redis),
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

    ctx = state_context()
    run_id = ctx.ledger.start_run("reconcile", catalog.source if catalog else "store", status="enqueuing")
    report: dict[str, Any] = {"run_id": run_id}
    if catalog is not None:
        # Only the registry is taken from this plan: the audit below finds what the store lacks or must lose.
        plan, pruned = plan_catalog(ctx.registry, catalog.products, _now_version(), run_id, prune=True)
        ctx.registry.settle(plan.settle)
        report["catalog"] = {"products": len(catalog.products), "pruned": pruned, **dict(plan.outcomes)}
    to_workers = gateway(ctx.settings, note)
    audited = to_workers.audit(timeout=timeout)
    missing = plan_missing(ctx.registry, [(str(p), str(u)) for p, u in audited["missing"]], run_id)
    publisher = to_workers.publisher(ctx.redis)
    backpressure = Backpressure(ctx.settings.fetch_high_water)
    carry_out(missing, publisher, ctx.registry, backpressure, run_id=run_id, ledger=ctx.ledger)
    ctx.ledger.set_meta(run_id, status="enqueued")
    if not missing.jobs:
        ctx.ledger.set_meta(run_id, finished_at=time.time())
    elif not to_workers.live_workers():
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
