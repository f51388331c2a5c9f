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
from functools import partial
from typing import Any, Protocol

from lookalike.app.broker import Broker, Note, announce_broker, resolve_broker
from lookalike.app.gateway import Gateway
from lookalike.app.local import check_model, start_local_workers
from lookalike.producer.catalog import CatalogReport
from lookalike.producer.enqueue import Backpressure
from lookalike.producer.sync import SyncPlan
from lookalike.state import runs
from lookalike.state.context import StateContext
from lookalike.state.errors import BackendUnavailable
from lookalike.state.ledger import finished
from lookalike.state.waiting import Watchdog

# How often a waiting command asks its watchdog whether anyone still works for it (a few Redis reads).
WATCHDOG_EVERY = 2.0


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
    earlier_pending: int = 0  # jobs of earlier runs still without an outcome when this run was enqueued
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

    def __init__(self, *, wait: bool, note: Note, progress: ProgressFactory, broker: Broker | None = None) -> None:
        self.want_wait = wait
        self.note = note
        self.progress = progress
        self._given = broker  # a broker the command already resolved and named: used as it is, closed by its owner
        self.broker: Broker | None = None
        self.group: Any = None
        self._state: StateContext | None = None
        self.waiting = wait
        self.workers: dict[str, list[str]] = {}
        self.earlier: dict[str, int] = {}  # run id -> jobs still waiting, of runs before this one

    @property
    def ctx(self) -> StateContext:
        """The light state on this ingest's broker (once entered)."""
        assert self._state is not None, "use Ingest as a context manager"
        return self._state

    def __enter__(self) -> Ingest:
        if self._given is not None:
            self.broker = self._given
        else:
            self.broker = resolve_broker()
            announce_broker(self.broker, self.note)
        self._state = StateContext(self.broker.settings)
        self.gateway = Gateway(self.ctx.settings, note=self.note)
        self.publisher = self.gateway.publisher(self.ctx.redis)
        # With an embedded broker, queued jobs would die with this command: it always waits.
        self.waiting = self.want_wait or self.broker.broker_is_embedded
        self._start_missing_workers()
        return self

    def _start_missing_workers(self) -> None:
        from lookalike.state.queues import ALL_QUEUES

        workers = self.workers = self.gateway.live_workers()
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
            if self.broker is not None and self._given is None:
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
        backpressure = self._backpressure()
        # Every write waits while the broker is out of memory (Redis full is not Redis gone).
        room = partial(backpressure.until_room, broker=self.ctx.redis)
        run_id = room(partial(runs.begin, ledger, runs.Kind.INGEST, report.source, version=version))
        plan, pruned = room(
            partial(plan_catalog, self.ctx.registry, report.products, version, run_id, full=full, prune=prune)
        )
        counts = {
            "rows_read": report.rows_read,
            "products": len(report.products),
            "rows_skipped": sum(report.skipped.values()),
            **{f"skipped:{reason}": count for reason, count in report.skipped.items()},
        }
        room(partial(ledger.add, run_id, counts, global_too=False))
        self._publish(plan, run_id, backpressure, hidden=quiet or not plan.jobs)
        room(partial(runs.published, ledger, run_id, anything=bool(plan.jobs or plan.reconcile)))
        self._tell_earlier(run_id)
        summary = _summary(report, plan, run_id=run_id, version=version, pruned=pruned, waited=backpressure.waited)
        summary.earlier_pending = sum(self.earlier.values())
        return summary

    def _backpressure(self) -> Backpressure:
        """Pause while the fetch queue is full, or the broker is out of memory; say so once per pause."""

        def waiting_for_room(depth: int) -> None:
            if not backpressure.waited:
                self.note(f"{depth} jobs waiting in the fetch queue: pausing until workers catch up")

        backpressure = Backpressure(
            self.ctx.settings.fetch_high_water, on_wait=waiting_for_room, on_broker_full=self.note
        )
        return backpressure

    def _tell_earlier(self, run_id: str) -> None:
        """A re-run tells the truth: jobs earlier runs left behind are not done because this run had none."""
        from lookalike.state.backlog import earlier_pending

        self.earlier = earlier_pending(self.ctx.ledger, besides=run_id)
        count = sum(self.earlier.values())
        if not count:
            return
        if self.group is not None:
            self.note(f"{count} jobs from earlier runs still waiting: the local workers take them too")
        elif not self.workers:
            self.note(f"{count} jobs from earlier runs still waiting: start `lookalike worker`")
        else:
            self.note(f"{count} jobs from earlier runs still waiting for the running workers")

    def _publish(self, plan: SyncPlan, run_id: str, backpressure: Backpressure, *, hidden: bool) -> None:
        """Carry the plan out, pausing while ``backpressure`` says so."""
        from lookalike.producer.enqueue import carry_out

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

    def wait_until_done(self, run_id: str, total: int, *, quiet: bool) -> WaitResult:
        """Wait until every job of the run has an outcome (or a local worker dies), then finish the run."""
        ledger = self.ctx.ledger
        started = time.monotonic()
        earlier = dict(self.earlier)  # waited for too, until each has no job left
        with self.progress("indexing", total + sum(earlier.values()), quiet) as bar:
            for run, done in self._readings(run_id, earlier):
                bar.show(done, f"indexed {run.get('indexed', 0)}, failed {run.get('failed', 0)}")
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

    def _readings(self, run_id: str, earlier: dict[str, int]) -> Iterator[tuple[dict[str, Any], int]]:
        """The run as it progresses (and how many awaited jobs, earlier runs' included, have an outcome), until
        it and the earlier runs are complete. A local worker that dies, a run gone from Redis, or a watchdog that
        sees nobody working for it (:mod:`lookalike.state.waiting`) ends the wait."""
        from lookalike.state.backlog import pending

        ledger = self.ctx.ledger
        settings = self.ctx.settings
        watchdog = Watchdog(
            self.ctx.redis, settings.key_prefix, grace=settings.wait_grace, deadline=settings.wait_deadline,
            note=self.note, what="this wait",
        )  # fmt: skip
        checked = 0.0
        while True:
            run = ledger.run(run_id)
            if run is None:  # flushed, or expired: nothing will ever complete it
                raise BackendUnavailable(f"run {run_id} is no longer in Redis (flushed?): stopped waiting")
            left = {rid: pending(ledger.run(rid) or {}) for rid in earlier}
            yield run, finished(run) + sum(earlier.values()) - sum(left.values())
            if runs.is_complete(run) and not any(left.values()):
                return
            if self.group is not None and self.group.dead():
                spec, code = self.group.dead()[0]
                raise BackendUnavailable(f"local workers: {self.group.death_line(spec, code)}")
            if time.monotonic() - checked >= WATCHDOG_EVERY:
                checked = time.monotonic()
                published = run.get("status") == runs.Status.ENQUEUED
                watchdog.check(pending(run) + sum(left.values()) if published else None)
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
