"""A shopper's answer, handed straight to the one process waiting for it.

Celery's result backend cost the waiting API, per query, a subscription, a read of the stored state, an
unsubscription and a hand-over from its listening thread, and the store owner a read before its write. A query
the API sends names a list of its own instead (``<prefix>:reply:<id>``): the store owner pushes the answer
there, with an expiry in case nobody waits any more, and the API's waiting thread pops it with BLPOP, which
returns the moment it arrives. One round trip on each side; nothing is left behind once it is read.

Other senders (the CLI's tools, tests) may still ask Celery for a query's result as before: a task sent without
a reply list stores its result as it always did.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

# BLPOP waits at most this long per call: a connection that died meanwhile (no reset ever arrives) is noticed
# within one slice plus the client's socket timeout, never holding a thread for good.
WAIT_SLICE = 5.0


def send_reply(client: redis.Redis, key: str, answer: dict[str, Any], ttl: int) -> None:
    """The answer to the list the sender waits on; gone after ``ttl`` seconds if nobody takes it."""
    pipe = client.pipeline(transaction=True)
    pipe.rpush(key, json.dumps(answer))
    pipe.expire(key, ttl)
    pipe.execute()


class Replies:
    """The waiting side: a fresh list per query, and the wait on it (one client, thread-safe: each blocking
    wait takes a connection of its own from the client's pool)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def new_key(self) -> str:
        return f"{self.prefix}:reply:{uuid.uuid4().hex}"

    def wait(self, key: str, timeout: float) -> dict[str, Any] | None:
        """The answer pushed to ``key`` within ``timeout`` seconds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            popped = self.client.blpop([key], timeout=min(WAIT_SLICE, max(0.01, remaining)))
            if popped is not None:
                answer: dict[str, Any] = json.loads(popped[1])
                return answer


__all__ = ["WAIT_SLICE", "Replies", "send_reply"]
