"""`lookalike ingest`: a catalogue in, one job per new image out, and (when asked, or on an embedded broker)
the wait until every job has an outcome.

The broker may be embedded and the workers local to this command: :class:`Ingest` starts what is missing
and stops it again. How progress is shown is the caller's (a :data:`ProgressFactory`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from lookalike.app.broker import Broker, Note, require_broker, resolve_broker
from lookalike.app.gateway import Gateway
from lookalike.app.local import check_model, start_local_workers
from lookalike.producer.catalog import CatalogReport
from lookalike.producer.sync import SyncPlan
from lookalike.state import runs
from lookalike.state.context import StateContext
from lookalike.state.errors import BackendUnavailable
from lookalike.state.ledger import finished


class Progress(Protocol):
    """One progress display: a total, then advances (publishing) or readings (waiting)."""

    def advance(self, count: int) -> None: ...

    def show(self, completed: int, description: str) -> None: ...


# (description, total, hidden) -> a display, open while the step runs.
ProgressFactory = Callable[[str, int, bool], AbstractContextManager[Progress]]


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


def now_version() -> int:
    """A catalogue version for now: milliseconds since the epoch."""
    return int(time.time() * 1000)


class Ingest:
    """Broker (maybe embedded), workers (maybe local), and the run of one `lookalike ingest`."""

    def __init__(self, *, wait: bool, note: Note, progress: ProgressFactory) -> None:
        self.want_wait = wait
        self.note = note
        self.progress = progress
        self.broker: Broker | None = None
        self.group: Any = None
        self._state: StateContext | None = None
        self.waiting = wait

    @property
    def ctx(self) -> StateContext:
        """The light state on this ingest's broker (once entered)."""
        assert self._state is not None, "use Ingest as a context manager"
        return self._state

    def __enter__(self) -> Ingest:
        self.broker = resolve_broker()
        for message in self.broker.notes:
            self.note(message)
        require_broker(self.broker.settings)
        self._state = StateContext(self.broker.settings)
        self.gateway = Gateway(self.ctx.settings, note=self.note)
        self.publisher = self.gateway.publisher(self.ctx.redis)
        # With an embedded broker, queued jobs would die with this command: it always waits.
        self.waiting = self.want_wait or self.broker.broker_is_embedded
        self._start_missing_workers()
        return self

    def _start_missing_workers(self) -> None:
        from lookalike.state.queues import ALL_QUEUES

        workers = self.gateway.live_workers()
        if self.waiting and not workers:
            check_model(self.ctx.settings)
            self.group = start_local_workers(self.ctx.settings, self.note)
        elif not workers:
            self.note("no worker is running: the jobs wait in the queue until you start `lookalike worker`")
        else:
            consumed = {q for queues in workers.values() for q in queues}
            missing = [q for q in ALL_QUEUES if q not in consumed]
            if missing:
                self.note(f"no running worker consumes {', '.join(missing)}; start one with `lookalike worker`")

    def __exit__(self, *exc: object) -> None:
        try:
            if self.group is not None:
                self.group.stop()
        finally:
            if self.broker is not None:
                self.broker.close()
            if self._state is not None:
                self._state.close()

    def run(
        self, report: CatalogReport, *, version: int | None, full: bool, prune: bool, quiet: bool
    ) -> IngestSummary:
        """Plan the catalogue against the registry and publish the plan, as one run."""
        from lookalike.producer.sync import plan_catalog

        ledger = self.ctx.ledger
        version = version or now_version()
        run_id = runs.begin(ledger, runs.Kind.INGEST, report.source, version=version)
        plan, pruned = plan_catalog(self.ctx.registry, report.products, version, run_id, full=full, prune=prune)
        ledger.add(
            run_id,
            {
                "rows_read": report.rows_read,
                "products": len(report.products),
                "rows_skipped": sum(report.skipped.values()),
                **{f"skipped:{reason}": count for reason, count in report.skipped.items()},
            },
            global_too=False,
        )
        waited = self._publish(plan, run_id, hidden=quiet or not plan.jobs)
        runs.published(ledger, run_id, anything=bool(plan.jobs or plan.reconcile))
        return _summary(report, plan, run_id=run_id, version=version, pruned=pruned, waited=waited)

    def _publish(self, plan: SyncPlan, run_id: str, *, hidden: bool) -> float:
        """Carry the plan out, pausing while the fetch queue is full; the seconds spent paused."""
        from lookalike.producer.enqueue import Backpressure, carry_out

        def waiting_for_room(depth: int) -> None:
            if not backpressure.waited:
                self.note(f"{depth} jobs waiting in the fetch queue: pausing until workers catch up")

        backpressure = Backpressure(self.ctx.settings.fetch_high_water, on_wait=waiting_for_room)
        with self.progress("enqueueing", len(plan.jobs), hidden) as bar:
            carry_out(
                plan,
                self.publisher,
                self.ctx.registry,
                backpressure,
                run_id=run_id,
                ledger=self.ctx.ledger,
                on_published=bar.advance,
            )
        return backpressure.waited

    def wait_until_done(self, run_id: str, total: int, *, quiet: bool) -> WaitResult:
        """Wait until every job of the run has an outcome (or a local worker dies), then finish the run."""
        ledger = self.ctx.ledger
        started = time.monotonic()
        with self.progress("indexing", total, quiet) as bar:
            for run in self._readings(run_id):
                bar.show(finished(run), f"indexed {run.get('indexed', 0)}, failed {run.get('failed', 0)}")
        seconds = time.monotonic() - started
        if finished(ledger.run(run_id) or {}) and self.ctx.settings.uses_embedded_store:
            # Build the search index over the new points now, while nobody waits on a query.
            self.gateway.optimize()
        run = ledger.run(run_id) or {}
        runs.finish(ledger, run_id)
        return WaitResult(
            indexed=int(run.get("indexed", 0)),
            failed=int(run.get("failed", 0)),
            superseded=int(run.get("superseded", 0)),
            failed_by_reason=runs.failed_by_reason(run),
            cache_hits=int(run.get("cache_hits", 0)),
            embed_calls=int(run.get("embed_calls", 0)),
            seconds=round(seconds, 3),
            images_per_second=round(finished(run) / seconds, 2) if seconds > 0 else 0.0,
        )

    def _readings(self, run_id: str) -> Iterator[dict[str, Any]]:
        """The run as it progresses, until it is complete; a local worker that dies ends the wait."""
        while True:
            run = self.ctx.ledger.run(run_id) or {}
            yield run
            if runs.is_complete(run):
                return
            if self.group is not None and self.group.dead():
                spec, code = self.group.dead()[0]
                raise BackendUnavailable(f"the local {spec.name} worker exited with code {code}")
            time.sleep(0.25)


def _summary(
    report: CatalogReport, plan: SyncPlan, *, run_id: str, version: int, pruned: int | None, waited: float
) -> IngestSummary:
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
        backpressure_seconds=round(waited, 3),
    )
