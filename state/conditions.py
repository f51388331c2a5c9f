"""Conditions that stop work without being any job's fault (the store's disk is full, a worker pool stopped),
shared through Redis so that every reader says the same thing.

Whoever finds a condition writes it here, with an expiry so that a reporter that dies cannot leave a stale
warning behind forever (the broker's own memory is read live instead); ``lookalike status``, ``/readyz`` and
the metrics read them. Each condition carries the one line an operator reads (``message``) and its facts for
tools.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from lookalike.state.brokerfull import BROKER_OUT_OF_MEMORY, broker_condition

STORE_DISK_FULL = "store_disk_full"
POOL_STOPPED = "pool_stopped"
CONDITION_KINDS = (STORE_DISK_FULL, POOL_STOPPED, BROKER_OUT_OF_MEMORY)


class Conditions:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = f"{prefix}:conditions:"

    def report(self, kind: str, message: str, *, ttl: float, key: str = "", **facts: Any) -> None:
        """Say (or say again) that ``kind`` holds; it lapses after ``ttl`` seconds unless reported again."""
        data = {"kind": kind, "message": message, "at": time.time(), **facts}
        self._redis.set(self._key(kind, key), json.dumps(data), px=max(1, int(ttl * 1000)))

    def clear(self, kind: str, key: str = "") -> None:
        self._redis.delete(self._key(kind, key))

    def active(self) -> list[dict[str, Any]]:
        """Every condition that holds now, oldest report first; the broker's memory is read live (a full broker
        cannot store a report of itself)."""
        keys = list(self._redis.scan_iter(match=self._prefix + "*", count=1000))
        found = [json.loads(value) for value in self._redis.mget(keys) if value] if keys else []
        broker = broker_condition(self._redis)
        if broker is not None:
            found.append(broker)
        return sorted(found, key=lambda item: float(item.get("at", 0)))

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}" if key else f"{self._prefix}{kind}"
