"""Keeping the index right: `lookalike reconcile` (converge whatever was lost), `lookalike failures` (list the
images that failed for good, or enqueue them again) and `lookalike reindex`. Each publishing use case is one
run (:mod:`lookalike.state.runs`)."""

from __future__ import annotations

from typing import Any

from lookalike.app.ingest import now_version
from lookalike.app.services import Services
from lookalike.producer.catalog import CatalogReport
from lookalike.producer.enqueue import Backpressure, carry_out
from lookalike.producer.sync import SyncPlan
from lookalike.state import runs
from lookalike.state.waiting import Watchdog


def _publish(services: Services, plan: SyncPlan, run_id: str) -> None:
    """Carry out ``plan`` as run ``run_id`` through the gateway's publisher, then mark the run published."""
    ctx = services.state
    publisher = services.gateway.publisher(ctx.redis)
    backpressure = Backpressure(services.settings.fetch_high_water)
    carry_out(plan, publisher, ctx.registry, backpressure, run_id=run_id, ledger=ctx.ledger)
    runs.published(ctx.ledger, run_id, anything=bool(plan.jobs or plan.reconcile))


def list_failures(services: Services, reason: str | None, limit: int | None) -> list[dict[str, Any]]:
    return [failure.public() for failure in services.state.failures.entries(reason, limit)]


def retry_failures(services: Services, reason: str | None) -> dict[str, Any]:
    """Re-enqueue failed images whose product still wants them, as a new run."""
    from lookalike.producer.sync import plan_retries

    ctx = services.state
    taken = ctx.failures.take(reason)
    run_id = runs.begin(ctx.ledger, runs.Kind.RETRY, f"failures{':' + reason if reason else ''}")
    plan, dropped = plan_retries(ctx.registry, taken, run_id)
    _publish(services, plan, run_id)
    workers = bool(services.gateway.live_workers())
    return {"run_id": run_id, "requeued": len(plan.jobs), "dropped": dropped, "workers": workers}


def waiting_without_workers(services: Services) -> int:
    """Jobs waiting in the fetch queue while no worker runs (0 when a worker runs): what `failures` mentions
    when it has nothing to list, since retried images are no longer failures until a worker tries them."""
    from lookalike.state.queues import FETCH_QUEUE, queue_depth

    depth = queue_depth(services.state.redis, FETCH_QUEUE)
    return depth if depth and not services.gateway.live_workers() else 0


def store_watchdog(services: Services, what: str) -> Watchdog:
    """The watchdog of a command waiting for the store owner (reconcile's audit, reindex): it names the queue
    nobody consumes and gives up after LOOKALIKE_WAIT_DEADLINE (:mod:`lookalike.state.waiting`)."""
    from lookalike.state.queues import INDEX_QUEUE

    settings = services.settings
    return Watchdog(
        services.state.redis, settings.key_prefix, grace=settings.wait_grace, deadline=settings.wait_deadline,
        note=services.note, queues=(INDEX_QUEUE,), what=what, need_consumer=True,
    )  # fmt: skip


def reconcile_index(services: Services, catalog: CatalogReport | None, *, timeout: float) -> dict[str, Any]:
    """Converge the index whatever was lost: the registry (from the catalogue, pruning what it no longer
    lists), then the store against the registry, by the store owner (orphan points deleted, payloads brought
    up to date; see the gateway for where the audit runs), then the registered images with no point are
    enqueued."""
    from lookalike.producer.sync import plan_catalog, plan_missing
    from lookalike.state.backlog import earlier_pending, write_off

    ctx = services.state
    run_id = runs.begin(ctx.ledger, runs.Kind.RECONCILE, catalog.source if catalog else "store")
    report: dict[str, Any] = {"run_id": run_id}
    if catalog is not None:
        # Only the registry is taken from this plan: the audit below finds what the store lacks or must lose.
        plan, pruned = plan_catalog(ctx.registry, catalog.products, now_version(), run_id, prune=True)
        ctx.registry.settle(plan.settle)
        report["catalog"] = {"products": len(catalog.products), "pruned": pruned, **dict(plan.outcomes)}
    audited = services.gateway.audit(timeout=timeout, watch=store_watchdog(services, "this reconcile").check)
    missing = plan_missing(ctx.registry, [(str(p), str(u)) for p, u in audited["missing"]], run_id)
    # Every registered image with no point is enqueued again: what earlier runs still wait for is covered, and
    # their jobs that were lost must not hold later waits for ever.
    write_off(ctx.ledger, earlier_pending(ctx.ledger, besides=run_id))
    _publish(services, missing, run_id)
    if missing.jobs and not services.gateway.live_workers():
        services.note(f"{len(missing.jobs)} images wait in the queue until you start `lookalike worker`")
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


def reindex(services: Services, *, timeout: float) -> dict[str, Any]:
    """Upgrade the live collection to the current layout, by whoever owns the store."""
    return services.gateway.reindex(timeout=timeout, watch=store_watchdog(services, "this reindex").check)
