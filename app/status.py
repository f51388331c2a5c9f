"""`lookalike status`: runs (progress, throughput, ETA), queue depths and ages, event counts, the live workers
and the model an embedding process would run, as data for the CLI to render or print as JSON."""

from __future__ import annotations

import time
from typing import Any

from lookalike.app.gateway import Gateway
from lookalike.config.settings import Settings
from lookalike.state import runs
from lookalike.state.context import StateContext
from lookalike.state.errors import ModelUnavailable
from lookalike.state.ledger import STAGES, finished


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """One run as `status` reports it: its state, its counts, and its rate and ETA so far."""
    enqueued = int(run.get("enqueued", 0))
    done = finished(run)
    created = float(run.get("created", time.time()))
    end = float(run.get("finished_at") or time.time())
    elapsed = max(end - created, 1e-9)
    rate = done / elapsed if done else 0.0
    complete = runs.is_complete(run)
    return {
        "run_id": run["run_id"],
        "kind": run.get("kind"),
        "source": run.get("source"),
        "status": runs.status_of(run),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "enqueued": enqueued,
        "indexed": int(run.get("indexed", 0)),
        "failed": int(run.get("failed", 0)),
        "superseded": int(run.get("superseded", 0)),
        "skipped_rows": int(run.get("rows_skipped", 0)),
        "failed_by_reason": runs.failed_by_reason(run),
        "cache_hits": int(run.get("cache_hits", 0)),
        "embed_calls": int(run.get("embed_calls", 0)),
        "progress": round(done / enqueued, 4) if enqueued else 1.0,
        "images_per_second": round(rate, 2),
        "eta_seconds": None if complete or not rate else round((enqueued - done) / rate, 1),
        "stage_seconds": {stage: round(float(run.get(f"seconds:{stage}", 0.0)), 3) for stage in STAGES},
    }


def collect_status(ctx: StateContext, gateway: Gateway, run_id: str | None, recent: int) -> dict[str, Any]:
    """Everything `status` shows; an unknown ``run_id`` is a LookupError."""
    from lookalike.state.queues import ALL_QUEUES, oldest_age, queue_depth

    settings = ctx.settings
    ids = [run_id] if run_id else ctx.ledger.run_ids(recent)
    found = []
    for rid in ids:
        run = ctx.ledger.run(rid)
        if run is None:
            if run_id:
                raise LookupError(f"no run {run_id!r} (runs are kept {settings.run_ttl}s)")
            continue
        found.append(run_summary(run))
    from lookalike.state.conditions import Conditions

    stats = ctx.ledger.stats()
    return {
        "conditions": Conditions(ctx.redis, settings.key_prefix).active(),
        "runs": found,
        "queues": {
            queue: {"depth": queue_depth(ctx.redis, queue), "oldest_age_seconds": _round(oldest_age(ctx.redis, queue))}
            for queue in ALL_QUEUES
        },
        "workers": gateway.live_workers(),
        "events": {name.split(":", 1)[1]: value for name, value in stats.items() if name.startswith("events:")},
        "failures_recorded": ctx.failures.count(),
        "products_registered": ctx.registry.count(),
        "model": model_in_effect(settings),
        "collection_model": collection_ownership(ctx),
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


def model_in_effect(settings: Settings) -> dict[str, Any]:
    """The models, execution providers and threads an embedding process started here would use."""
    from lookalike.worker.embed import onnx_runtime_in_effect

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


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
