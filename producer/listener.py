"""`lookalike listen`: consume change events from the Redis Stream in a consumer group.

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
from lookalike.state.ledger import Ledger
from lookalike.state.registry import ProductRegistry

log = logging.getLogger(__name__)

EVENTS_RUN = "events"
Entry = tuple[bytes, dict[bytes, bytes]]
REJECTED_CAP = 10_000


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
        self.ledger.start_run("events", self.stream, run_id=EVENTS_RUN, status="enqueued")

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
        """Apply a batch of entries, enqueue their work, then acknowledge them all."""
        report = BatchReport(entries=len(entries))
        upserts: list[tuple[Any, int | float]] = []
        deletes: list[tuple[str, int | float]] = []
        rejected: list[str] = []
        for entry_id, fields in entries:
            raw = fields.get(EVENT_FIELD.encode())
            try:
                if raw is None:
                    raise EventRejected("missing_field", EVENT_FIELD, "the stream entry has no 'event' field")
                event = parse_event(raw)
            except EventRejected as exc:
                report.rejected[exc.reason] += 1
                rejected.append(
                    json.dumps(
                        {
                            "stream_id": entry_id.decode(),
                            "reason": exc.reason,
                            "field": exc.field,
                            "detail": exc.detail,
                            "event": (raw or b"").decode("utf-8", "replace")[:2000],
                            "time": time.time(),
                        }
                    )
                )
                log.warning("rejected event %s: %s", entry_id.decode(), exc)
                continue
            if isinstance(event, UpsertEvent):
                upserts.append((event.product, event.version))
            elif isinstance(event, DeleteEvent):
                deletes.append((event.product_id, event.version))
        plan = SyncPlan()
        if upserts:
            plan.merge(plan_upserts(self.registry, upserts, EVENTS_RUN))
        if deletes:
            plan.merge(plan_deletes(self.registry, deletes))
        carry_out(plan, self.publisher, self.registry, self.backpressure, run_id=EVENTS_RUN, ledger=self.ledger)
        report.outcomes = plan.outcomes
        report.jobs = len(plan.jobs)
        counts = {f"events:{name}": n for name, n in plan.outcomes.items()}
        counts.update({f"events:failed:{reason}": n for reason, n in report.rejected.items()})
        handled = sum(n for name, n in plan.outcomes.items() if name != "stale")
        counts["events:handled"] = handled  # events:stale is among the outcomes already
        counts["events:failed"] = sum(report.rejected.values())
        pipe = self.redis.pipeline(transaction=False)
        if rejected:
            pipe.lpush(self.rejected_key, *rejected)
            pipe.ltrim(self.rejected_key, 0, REJECTED_CAP - 1)
        pipe.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        pipe.execute()
        self.ledger.count_global({name: n for name, n in counts.items() if n})
        return report

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
