"""`lookalike listen`: consume change events from the Redis Stream in a consumer group.

Every entry ends applied, stale or rejected, whatever it holds: a listener never dies on content. Validation
refuses what it knows is bad (:func:`~lookalike.producer.events.parse_event`); anything else an entry makes go
wrong - a bug - rejects that entry with the reason ``internal_<ExceptionName>`` instead of stopping every listener
on it for good (the entry would stay pending, and each restarted listener would re-read it first and die again).
Only Redis or the broker failing stops the listener, with nothing acknowledged: that is no entry's fault.

An entry is acknowledged only after the work it asked for is on the queues (or after it was rejected and
recorded). A listener that starts again under the same consumer name first re-reads its own unacknowledged
entries; entries a dead listener left pending longer than ``claim_idle`` seconds are claimed by any listener.
Re-handling an entry is harmless: the registry's versions make it stale, or - if its work was never
enqueued - redo it (see :mod:`lookalike.state.registry`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from lookalike.producer.enqueue import Backpressure, Publisher, carry_out
from lookalike.producer.events import EVENT_FIELD, DeleteEvent, EventRejected, UpsertEvent, parse_event
from lookalike.producer.sync import SyncPlan, plan_deletes, plan_upserts
from lookalike.state import runs
from lookalike.state.ledger import Ledger
from lookalike.state.registry import ProductRegistry

log = logging.getLogger(__name__)

EVENTS_RUN = "events"
Entry = tuple[bytes, dict[bytes, bytes]]
Parsed = tuple[bytes, bytes | None, UpsertEvent | DeleteEvent]  # (entry id, its text, the valid event)
REJECTED_CAP = 10_000
INTERNAL = "internal_"  # reason prefix of an entry rejected because handling it raised something unexpected

# Redis or the broker failing. Celery's publisher wraps Redis's connection errors in kombu's OperationalError
# (raised "from" them), so the chain of causes is searched rather than importing kombu here.
INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # also BusyLoadingError (Redis loading its data) and authentication errors
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    ConnectionError,
    TimeoutError,
)


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, Redis or the broker failing (then no entry is at fault)."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain is short; the bound guards against a cycle
        if seen is None:
            return False
        if isinstance(seen, INFRASTRUCTURE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass
class BatchReport:
    entries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    jobs: int = 0


class EventListener:
    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        registry: ProductRegistry,
        ledger: Ledger,
        publisher: Publisher,
        backpressure: Backpressure,
        rejected_key: str,
        claim_idle: float = 60.0,
        batch: int = 100,
        block_ms: int = 1000,
    ) -> None:
        self.redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.registry = registry
        self.ledger = ledger
        self.publisher = publisher
        self.backpressure = backpressure
        self.rejected_key = rejected_key
        self.claim_idle_ms = int(claim_idle * 1000)
        self.batch = batch
        self.block_ms = block_ms

    def ensure_group(self) -> None:
        try:
            # From the beginning: events published before the first listener started are not lost.
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        runs.continuous(self.ledger, runs.Kind.EVENTS, self.stream, EVENTS_RUN)

    # ------------------------------------------------------------------------------------------ reading
    @staticmethod
    def _entries(replies: Any) -> list[Entry]:
        # Entries whose data is gone (trimmed from the stream while pending) come back empty: nothing to do.
        return [entry for _stream, entries in replies or [] for entry in entries if entry[1]]

    def _own_pending(self) -> list[Entry]:
        return self._entries(self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=self.batch))

    def _claim_abandoned(self) -> list[Entry]:
        reply: Any = self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        return [entry for entry in reply[1] if entry[1]]

    def _new(self) -> list[Entry]:
        return self._entries(
            self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=self.block_ms)
        )

    # --------------------------------------------------------------------------------------- handling
    def handle(self, entries: list[Entry]) -> BatchReport:
        """Apply a batch of entries, enqueue their work, then acknowledge them all.

        Each entry ends applied (its outcome: new, changed, stale ...) or rejected and recorded; the rejection
        records and the acknowledgement go in one transaction, and the counts follow, once. An infrastructure
        error (:func:`is_infrastructure`) propagates with nothing acknowledged.
        """
        report = BatchReport(entries=len(entries))
        events: list[Parsed] = []
        rejected: list[str] = []
        for entry_id, fields in entries:
            raw = fields.get(EVENT_FIELD.encode())
            try:
                if raw is None:
                    raise EventRejected("missing_field", EVENT_FIELD, "the stream entry has no 'event' field")
                events.append((entry_id, raw, parse_event(raw)))
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                rejected.append(self._rejection(report, entry_id, raw, exc))
        plan = self._apply(events, report, rejected)
        report.outcomes = plan.outcomes
        report.jobs = len(plan.jobs)
        counts = {f"events:{name}": n for name, n in plan.outcomes.items()}
        counts.update({f"events:failed:{reason}": n for reason, n in report.rejected.items()})
        handled = sum(n for name, n in plan.outcomes.items() if name != "stale")
        counts["events:handled"] = handled  # events:stale is among the outcomes already
        counts["events:failed"] = sum(report.rejected.values())
        # One transaction: an entry is never acknowledged without its rejection recorded (Redis refusing the
        # record, out of memory say, refuses the acknowledgement with it).
        pipe = self.redis.pipeline(transaction=True)
        if rejected:
            pipe.lpush(self.rejected_key, *rejected)
            pipe.ltrim(self.rejected_key, 0, REJECTED_CAP - 1)
        pipe.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        pipe.execute()
        self.ledger.count_global({name: n for name, n in counts.items() if n})
        return report

    def _plan_and_enqueue(self, events: list[UpsertEvent | DeleteEvent]) -> SyncPlan:
        upserts = [(event.product, event.version) for event in events if isinstance(event, UpsertEvent)]
        deletes = [(event.product_id, event.version) for event in events if isinstance(event, DeleteEvent)]
        plan = SyncPlan()
        if upserts:
            plan.merge(plan_upserts(self.registry, upserts, EVENTS_RUN))
        if deletes:
            plan.merge(plan_deletes(self.registry, deletes))
        carry_out(plan, self.publisher, self.registry, self.backpressure, run_id=EVENTS_RUN, ledger=self.ledger)
        return plan

    def _apply(self, events: list[Parsed], report: BatchReport, rejected: list[str]) -> SyncPlan:
        """Plan and enqueue the batch's valid events together (one registry round trip, one publish).

        When that raises something other than an infrastructure error, no event can be blamed yet: each is
        then planned and enqueued on its own, so only the one at fault is rejected and the others are applied.
        An event the failed attempt had already registered comes back as a replay, which the registry redoes in
        full (as after a listener crash); nothing was counted for the failed attempt, so no outcome is counted twice.
        """
        if not events:
            return SyncPlan()
        try:
            return self._plan_and_enqueue([event for _, _, event in events])
        except Exception as exc:
            if is_infrastructure(exc):
                raise
            log.warning("a batch of %d events failed (%r); applying them one at a time", len(events), exc)
        plan = SyncPlan()
        for entry_id, raw, event in events:
            try:
                plan.merge(self._plan_and_enqueue([event]))
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                rejected.append(self._rejection(report, entry_id, raw, exc))
        return plan

    def _rejection(self, report: BatchReport, entry_id: bytes, raw: bytes | None, exc: Exception) -> str:
        """Count a rejected entry and return its record for ``lookalike events --rejected``."""
        if isinstance(exc, EventRejected):
            rejection = exc
            log.warning("rejected event %s: %s", entry_id.decode(), rejection)
        else:
            log.exception("rejected event %s: handling it raised %s", entry_id.decode(), type(exc).__name__)
            # Printable whatever the exception says: a message may quote the entry's text, surrogates and all.
            detail = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")[:200]
            rejection = EventRejected(INTERNAL + type(exc).__name__, None, detail)
        report.rejected[rejection.reason] += 1
        return json.dumps(
            {
                "stream_id": entry_id.decode(),
                "reason": rejection.reason,
                "field": rejection.field,
                "detail": rejection.detail,
                "event": (raw or b"").decode("utf-8", "replace")[:2000],
                "time": time.time(),
            }
        )

    # ------------------------------------------------------------------------------------------ loop
    def run(
        self,
        stop: threading.Event,
        *,
        stop_when_idle: float | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self.ensure_group()
        idle_since = time.monotonic()
        last_claim = 0.0
        while not stop.is_set():
            entries = self._own_pending()
            if not entries and time.monotonic() - last_claim > 5:
                last_claim = time.monotonic()
                entries = self._claim_abandoned()
            if not entries:
                entries = self._new()
            if entries:
                report = self.handle(entries)
                idle_since = time.monotonic()
                if on_batch:
                    on_batch(report)
            elif stop_when_idle is not None and time.monotonic() - idle_since >= stop_when_idle:
                return


def rejected_events(client: redis.Redis, key: str, limit: int | None = None) -> list[dict[str, Any]]:
    raw: Any = client.lrange(key, 0, (limit or 0) - 1)
    return [json.loads(item) for item in raw]
