"""A waiting command never waits on nobody.

`ingest --wait`, `reconcile` and `reindex` wait for workers. Workers can be missing for good: never started, a
pool that stopped after a crash loop (a full disk), a machine that went away. Then the jobs sit in their queue
and the command would wait for ever, saying nothing. The :class:`Watchdog` is asked every few seconds while a
command waits: a queue that holds the awaited work while no live worker consumes it (read from the workers'
presence keys, :mod:`lookalike.state.presence`) is named, with what to start, once it has been so for
``LOOKALIKE_WAIT_GRACE`` seconds (longer than a pool restart); after ``LOOKALIKE_WAIT_DEADLINE`` seconds the
command gives up with :class:`NobodyWorking` (exit code 3). The jobs stay queued: nothing is lost by giving up.

It also notices awaited jobs that are in no queue and held by no worker (a job lost in a crash, see the
README's failure modes): nothing will ever finish them, and ``lookalike reconcile`` enqueues them again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from lookalike.state.brokerfull import has_room
from lookalike.state.errors import Unavailable
from lookalike.state.presence import Presence
from lookalike.state.queues import EMBED_QUEUE, FETCH_QUEUE, INDEX_QUEUE, QUEUE_ALIASES, queue_depth

PIPELINE_QUEUES = (FETCH_QUEUE, EMBED_QUEUE, INDEX_QUEUE)
# kombu's Redis transport: messages delivered and not yet acknowledged, as [payload, exchange, routing key].
UNACKED_KEY = "unacked"
NOWHERE = "(no queue)"


class NobodyWorking(Unavailable):
    """Waited ``LOOKALIKE_WAIT_DEADLINE`` seconds with nobody to do the work: give up (exit code 3)."""


def start_hint(queue: str) -> str:
    short = {name: alias for alias, name in QUEUE_ALIASES.items()}.get(queue, queue)
    return f"start `lookalike worker` (every queue) or `lookalike worker --queues {short}`"


@dataclass
class Watchdog:
    """Asked with :meth:`check` while a command waits; see the module docstring."""

    client: redis.Redis
    prefix: str
    grace: float
    deadline: float
    note: Callable[[str], None]
    queues: tuple[str, ...] = PIPELINE_QUEUES
    what: str = "this run"
    # Waiting for one task's answer: its queue needs a live consumer even when it looks empty (a task taken by a
    # worker that died since is in no queue any more).
    need_consumer: bool = False
    clock: Callable[[], float] = time.monotonic
    _since: dict[str, float] = field(default_factory=dict)
    _told: set[str] = field(default_factory=set)

    def check(self, pending: int | None = None) -> None:
        """``pending``: awaited jobs without an outcome (None when the awaited work is not made of jobs, such
        as one task that is acknowledged as it starts)."""
        if not has_room(self.client):
            # Workers cannot refresh their presence keys while the broker is full: they look absent, but the work
            # waits for memory, not for workers (the producer and the workers said so). Nothing counts meanwhile.
            self._since.clear()
            self._told.clear()
            return
        consumed = {queue for queues in Presence(self.client, self.prefix).alive().values() for queue in queues}
        held = {queue: queue_depth(self.client, queue) for queue in self.queues}
        unconsumed = [queue for queue in self.queues if queue not in consumed]
        if unconsumed:
            in_hand = self._unacked_by_queue()
            for queue in unconsumed:
                held[queue] += in_hand.get(queue, 0)
        stalled = {queue: held[queue] for queue in unconsumed if held[queue] or self.need_consumer}
        if pending and not any(held.values()) and not self._unacked_total():
            stalled[NOWHERE] = pending
        now = self.clock()
        for name in list(self._since):
            if name not in stalled:
                del self._since[name]
                self._told.discard(name)
        for name, count in stalled.items():
            waited = now - self._since.setdefault(name, now)
            if waited >= self.deadline:
                raise NobodyWorking(f"gave up after {waited:.0f}s: {self._describe(name, count)}")
            if waited >= self.grace and name not in self._told:
                self.note(self._describe(name, count) + f" (giving up in {self.deadline - waited:.0f}s)")
                self._told.add(name)

    def _describe(self, name: str, count: int) -> str:
        if name == NOWHERE:
            return (
                f"{count} jobs of {self.what} are in no queue and no worker holds them (lost, as when a worker or "
                "Redis is killed at the wrong instant): `lookalike reconcile` enqueues them again"
            )
        holds = f"which holds {count} messages of the awaited work" if count else f"which {self.what} needs"
        return f"no live worker consumes {name}, {holds}: {start_hint(name)}"

    def _unacked_by_queue(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for raw in self.client.hvals(UNACKED_KEY):
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, IndexError, TypeError):
                continue
            counts[routing_key] = counts.get(routing_key, 0) + 1
        return counts

    def _unacked_total(self) -> int:
        return int(self.client.hlen(UNACKED_KEY))

