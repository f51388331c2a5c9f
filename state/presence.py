"""Which workers are alive and what they consume, from keys each worker refreshes in Redis.

Celery's own way to ask (``inspect().active_queues()``) needs remote control, which lets anyone who can write
to the broker tell every worker to shut down or change its pools; lookalike turns it off by default
(``LOOKALIKE_REMOTE_CONTROL``). Each worker instead writes one key with its queues every few seconds, with a
short expiry: a worker that dies silently drops out within ``TTL`` seconds. Reading it is one SCAN, with no
waiting for replies.
"""

from __future__ import annotations

import contextlib
import json
import threading

import redis

BEAT_SECONDS = 3.0
TTL_SECONDS = 10


class Presence:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = f"{prefix}:workers:"

    def beat(self, node: str, queues: list[str]) -> None:
        self._redis.set(self._prefix + node, json.dumps(sorted(queues)), ex=TTL_SECONDS)

    def leave(self, node: str) -> None:
        self._redis.delete(self._prefix + node)

    def alive(self) -> dict[str, list[str]]:
        """Worker node name -> the queues it consumes, for every worker that beat within the last TTL."""
        keys = list(self._redis.scan_iter(match=self._prefix + "*", count=1000))
        if not keys:
            return {}
        found = {}
        for key, value in zip(keys, self._redis.mget(keys), strict=True):
            if value:
                name = key.decode() if isinstance(key, bytes) else str(key)
                found[name[len(self._prefix) :]] = list(json.loads(value))
        return dict(sorted(found.items()))

    def keep_beating(self, node: str, queues: list[str], stop: threading.Event) -> threading.Thread:
        """Beat now and every BEAT_SECONDS until ``stop`` is set (a daemon thread; Redis errors are retried)."""

        def run() -> None:
            while not stop.is_set():
                with contextlib.suppress(redis.RedisError):  # Redis restarting: beat again next time
                    self.beat(node, queues)
                stop.wait(BEAT_SECONDS)
            with contextlib.suppress(redis.RedisError):
                self.leave(node)

        with contextlib.suppress(redis.RedisError):
            self.beat(node, queues)
        thread = threading.Thread(target=run, name="lookalike-presence", daemon=True)
        thread.start()
        return thread
