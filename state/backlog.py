"""Jobs of earlier runs that still wait, so a re-run tells the truth.

A re-run of `ingest` enqueues only what changed; the jobs earlier runs left in the queues (no worker was
running, a pool stopped) are not its own, and it used to report "0 enqueued ... done" while hundreds waited.
The ledger knows each run's jobs without an outcome (enqueued - indexed - failed - superseded); this sums them
over the recent runs, so `ingest` can say so and its `--wait` can wait for them too.

Jobs that were lost (in no queue and held by no worker, see :mod:`lookalike.state.waiting`) would keep a run
pending for ever; `lookalike reconcile` enqueues their images again, and writes them off from the earlier runs
(``written_off``) so that no later wait waits for them.
"""

from __future__ import annotations

from lookalike.state.ledger import Ledger, finished

RECENT_RUNS = 200
WRITTEN_OFF = "written_off"


def pending(run: dict[str, object]) -> int:
    """Jobs of ``run`` with no outcome yet, less those a reconcile wrote off."""
    enqueued = int(run.get("enqueued", 0) or 0)  # type: ignore[call-overload]
    written_off = int(run.get(WRITTEN_OFF, 0) or 0)  # type: ignore[call-overload]
    return max(0, enqueued - finished(run) - written_off)


def earlier_pending(ledger: Ledger, *, besides: str | None = None, recent: int = RECENT_RUNS) -> dict[str, int]:
    """Run id -> jobs still without an outcome, for the ``recent`` latest runs other than ``besides``."""
    found = {}
    for run_id in ledger.run_ids(recent):
        if run_id == besides:
            continue
        run = ledger.run(run_id)
        if run and (count := pending(run)):
            found[run_id] = count
    return found


def write_off(ledger: Ledger, runs: dict[str, int]) -> None:
    """Stop waiting for these runs' pending jobs (a reconcile enqueued their images again)."""
    for run_id, count in runs.items():
        ledger.add(run_id, {WRITTEN_OFF: count}, global_too=False)
