"""Queue depths, the age of the oldest waiting job, and backpressure, read straight from Redis.

Kombu's Redis transport keeps a queue as a list (pushed on the left, popped on the right) plus one list per
priority step; the oldest message is the rightmost element.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from lookalike.state.messages import message_time

FETCH_QUEUE = "lookalike.fetch"
EMBED_QUEUE = "lookalike.embed"
INDEX_QUEUE = "lookalike.index"
QUERY_QUEUE = "lookalike.query"
# A query's download and embedding: on the embedding processes (where CPU scales), never on the store owner.
ENCODE_QUEUE = "lookalike.encode"
ALL_QUEUES = (FETCH_QUEUE, EMBED_QUEUE, INDEX_QUEUE, QUERY_QUEUE, ENCODE_QUEUE)

# Short names for `lookalike worker --queues`.
QUEUE_ALIASES = {
    "fetch": FETCH_QUEUE,
    "embed": EMBED_QUEUE,
    "index": INDEX_QUEUE,
    "query": QUERY_QUEUE,
    "encode": ENCODE_QUEUE,
}

_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def _keys(queue: str) -> list[str]:
    return [queue] + [f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]


def queue_depth(client: redis.Redis, queue: str) -> int:
    pipe = client.pipeline(transaction=False)
    for key in _keys(queue):
        pipe.llen(key)
    return int(sum(pipe.execute()))


def queue_depths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    return {queue: queue_depth(client, queue) for queue in queues}


def _message_time(raw: bytes) -> float | None:
    """When the job in a raw kombu message was enqueued (our messages carry it in their first argument)."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return message_time(args[0] if args else None)
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def oldest_age(client: redis.Redis, queue: str) -> float | None:
    """Seconds the oldest waiting message of ``queue`` has waited (None when empty or unknown)."""
    ages = []
    for key in _keys(queue):
        raw = client.lindex(key, -1)
        if raw:
            stamp = _message_time(raw)  # type: ignore[arg-type]
            if stamp:
                ages.append(time.time() - stamp)
    return max(ages) if ages else None


def wait_below(
    depth: Callable[[], int],
    high_water: int,
    *,
    poll: float = 0.2,
    on_wait: Callable[[int], Any] | None = None,
    timeout: float | None = None,
) -> float:
    """Block while ``depth()`` exceeds ``high_water``; returns the seconds spent waiting."""
    started = time.monotonic()
    while True:
        current = depth()
        if current <= high_water:
            return time.monotonic() - started
        if on_wait:
            on_wait(current)
        if timeout is not None and time.monotonic() - started > timeout:
            return time.monotonic() - started
        time.sleep(poll)
