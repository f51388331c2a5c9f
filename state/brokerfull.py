"""Redis full is not Redis gone: the broker's out-of-memory answer, told apart from an outage and waited out.

A Redis at ``maxmemory`` with the ``noeviction`` policy (the only policy that never drops a queued job) still
answers; it refuses every command that could use more memory with ``OOM command not allowed when used memory >
'maxmemory'`` (redis-py raises ``OutOfMemoryError``; kombu re-raises it as an ``OperationalError`` with the same
text; inside MULTI it aborts the transaction as ``EXECABORT``). Nothing is wrong with the job that hit it, and
reads and deletes still work, so workers that drain the queues free memory by themselves. So everywhere it is
the same rule as a broker outage: the producer pauses and retries, a worker hands its message back, nothing is
recorded as failed, and the operator reads "the broker is out of memory (maxmemory N)".
"""

from __future__ import annotations

import time
from typing import Any

import redis

from lookalike.state.errors import Unavailable

OOM_MARKERS = ("used memory > 'maxmemory'", "oom command not allowed")
MIB = 1024 * 1024
# Room a write needs before the broker counts as having room again: a batch message is up to ~1 MiB.
ROOM_MARGIN = MIB
BROKER_OUT_OF_MEMORY = "broker_out_of_memory"


class BrokerOutOfMemory(Unavailable):
    """The broker refused a write because it is at maxmemory: wait for room (workers drain it), never fail."""

    def __init__(self, maxmemory: int | None, *, published: int = 0) -> None:
        self.maxmemory = maxmemory
        self.published = published  # messages of the refused batch that went out before the refusal
        super().__init__(describe(maxmemory), retry_after=10)


def describe(maxmemory: int | None) -> str:
    limit = f"maxmemory {maxmemory / MIB:.1f} MiB" if maxmemory else "maxmemory"
    return (
        f"the broker is out of memory ({limit}): it refuses new work until workers drain its queues, or raise "
        "its maxmemory"
    )


def out_of_memory(error: BaseException) -> bool:
    """True when ``error`` (or anything in its chain) is the broker's out-of-memory refusal."""
    cause: BaseException | None = error
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, (redis.exceptions.OutOfMemoryError, BrokerOutOfMemory)):
            return True
        text = str(cause).lower()
        if any(marker in text for marker in OOM_MARKERS):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def memory(client: redis.Redis) -> tuple[int, int | None]:
    """(used bytes, maxmemory or None when unlimited or unknown), from INFO (allowed even when the broker is
    full; a managed Redis that hides INFO reads as unlimited: its refusals are still told apart)."""
    try:
        info: dict[str, Any] = client.info("memory")
    except redis.ResponseError:
        return 0, None
    limit = int(info.get("maxmemory") or 0)
    return int(info.get("used_memory") or 0), (limit or None)


def has_room(client: redis.Redis) -> bool:
    used, limit = memory(client)
    return limit is None or used + ROOM_MARGIN < limit


def broker_condition(client: redis.Redis) -> dict[str, Any] | None:
    """The broker's own out-of-memory condition, read live (INFO), in the form of
    :mod:`lookalike.state.conditions`; None while it has room."""
    used, limit = memory(client)
    if limit is None or used + ROOM_MARGIN < limit:
        return None
    return {
        "kind": BROKER_OUT_OF_MEMORY,
        "message": f"broker: out of memory ({used / MIB:.1f} MiB used of maxmemory {limit / MIB:.1f} MiB)",
        "at": time.time(),
        "used_bytes": used,
        "maxmemory": limit,
    }


def as_broker_full(error: BaseException, client: redis.Redis, *, published: int = 0) -> BrokerOutOfMemory:
    """The refusal as a :class:`BrokerOutOfMemory` naming the limit (None when it cannot be read)."""
    try:
        _used, limit = memory(client)
    except redis.RedisError:
        limit = None
    full = BrokerOutOfMemory(limit, published=published)
    full.__cause__ = error
    return full


def wait_for_room(client: redis.Redis, seconds: float, poll: float = 0.5) -> bool:
    """Up to ``seconds`` for the broker to have room again (True when it has)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if has_room(client):
                return True
        except redis.RedisError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
