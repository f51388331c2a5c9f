"""A run's lifecycle, written once: every producer of jobs (ingest, retry, reconcile, the event listener)
starts, publishes and finishes its runs through these functions, and every reader asks them what state a run
is in. No other module writes or compares a run's status.

A run moves through named states::

    begin()      -> ENQUEUING   the producer is publishing; the counters grow as messages go out
    published()  -> ENQUEUED    everything is out; a run that published nothing is finished at once
    finish()                    finished_at: when a command stopped waiting for it (its clock stops)

and is *complete* (reported as DONE) once it is ENQUEUED, every job has an outcome and every reconcile batch
has run. A producer killed while ENQUEUING leaves a run that never completes: it never waits for jobs that were
not published. The event listener's run is *continuous*: ENQUEUED from its start, it never finishes.

The run's counters live in the ledger (:mod:`lookalike.state.ledger`); this module only owns their meaning.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from lookalike.state.ledger import Ledger, finished


class Status(StrEnum):
    ENQUEUING = "enqueuing"
    ENQUEUED = "enqueued"
    # Reported only: a run that is ENQUEUED and complete, or one whose status was never written.
    DONE = "done"
    UNKNOWN = "unknown"


class Kind(StrEnum):
    INGEST = "ingest"
    RETRY = "retry"
    RECONCILE = "reconcile"
    EVENTS = "events"
    REINDEX = "reindex"  # `lookalike reindex --model`: a shadow collection filled by the workers


def begin(ledger: Ledger, kind: Kind, source: str, *, version: int | None = None) -> str:
    """A new run, ENQUEUING: its id."""
    meta: dict[str, Any] = {"status": Status.ENQUEUING.value}
    if version is not None:
        meta["version"] = version
    return ledger.start_run(kind.value, source, **meta)


def published(ledger: Ledger, run_id: str, *, anything: bool) -> None:
    """Everything the run will publish is out: ENQUEUED; finished now when ``anything`` was not published."""
    ledger.set_meta(run_id, status=Status.ENQUEUED.value)
    if not anything:
        finish(ledger, run_id)


def finish(ledger: Ledger, run_id: str) -> None:
    """The run's clock stops (its rate and ETA are measured up to here)."""
    ledger.set_meta(run_id, finished_at=time.time())


def continuous(ledger: Ledger, kind: Kind, source: str, run_id: str) -> str:
    """A run that publishes for as long as its producer lives (the event listener's): ENQUEUED from the start."""
    return ledger.start_run(kind.value, source, run_id=run_id, status=Status.ENQUEUED.value)


def is_complete(run: dict[str, Any]) -> bool:
    """Every job has an outcome and every reconcile batch has run (once everything was published)."""
    return (
        run.get("status") == Status.ENQUEUED
        and finished(run) >= int(run.get("enqueued", 0))
        and int(run.get("reconciles_done", 0)) >= int(run.get("reconciles", 0))
    )


def status_of(run: dict[str, Any]) -> str:
    """The state to report: DONE once complete, else the status written last."""
    return Status.DONE.value if is_complete(run) else str(run.get("status", Status.UNKNOWN.value))


def failed_by_reason(run: dict[str, Any]) -> dict[str, int]:
    """The run's failures counted by reason (``failed:<reason>`` counters)."""
    return {name.split(":", 1)[1]: int(value) for name, value in run.items() if name.startswith("failed:")}
