"""The dead-letter list: every image that failed for good, with where and why, ready to be replayed.

A capped Redis list (newest first), independent of the vector store, so a store outage cannot lose the record
of what failed because of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from lookalike.state.messages import point_id_for


@dataclass
class Failure:
    product_id: str
    image_url: str
    stage: str
    reason: str
    run_id: str
    detail: str = ""
    time: float = field(default_factory=time.time)
    job: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Failure:
        data = json.loads(raw)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    @property
    def point_id(self) -> str:
        return point_id_for(self.product_id, self.image_url)

    def public(self) -> dict[str, Any]:
        """The form `lookalike failures --json` prints."""
        return {
            "product_id": self.product_id,
            "image_url": self.image_url,
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
            "run_id": self.run_id,
        }


class FailureLog:
    def __init__(self, client: redis.Redis, key: str, cap: int) -> None:
        self._redis = client
        self.key = key
        self.cap = cap

    @property
    def ids_key(self) -> str:
        """The point ids of the listed images: what :meth:`forget` checks in one command per batch."""
        return f"{self.key}:ids"

    def add(self, failures: Iterable[Failure]) -> None:
        items = list(failures)
        if not items:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(self.key, *(f.to_json() for f in items))
        pipe.ltrim(self.key, 0, self.cap - 1)
        pipe.sadd(self.ids_key, *(f.point_id for f in items))
        pipe.execute()

    def forget(self, point_ids: Iterable[str]) -> int:
        """Drop the entries of images that were indexed after all (a later run, a retry, a message that came
        back): the failure log lists what is failed now. One SMISMEMBER when none of them is listed."""
        ids = list(dict.fromkeys(point_ids))
        if not ids:
            return 0
        listed = {pid for pid, hit in zip(ids, self._redis.smismember(self.ids_key, ids), strict=True) if hit}
        if not listed:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        dropped = 0
        for raw in self._raw():
            if Failure.from_json(raw).point_id in listed:
                pipe.lrem(self.key, 1, raw)  # type: ignore[arg-type]
                dropped += 1
        pipe.srem(self.ids_key, *listed)
        pipe.execute()
        return dropped

    def _raw(self) -> list[bytes]:
        return list(self._redis.lrange(self.key, 0, -1))  # type: ignore[arg-type]

    def entries(self, reason: str | None = None, limit: int | None = None) -> list[Failure]:
        items = [Failure.from_json(raw) for raw in self._raw()]
        if reason:
            items = [f for f in items if f.reason == reason or f.reason.startswith(reason + "_")]
        return items[:limit] if limit else items

    def take(self, reason: str | None = None) -> list[Failure]:
        """Remove and return the matching entries (exact values, so concurrent additions are kept)."""
        taken: list[Failure] = []
        pipe = self._redis.pipeline(transaction=False)
        for raw in self._raw():
            failure = Failure.from_json(raw)
            if reason and not (failure.reason == reason or failure.reason.startswith(reason + "_")):
                continue
            taken.append(failure)
            pipe.lrem(self.key, 1, raw)  # type: ignore[arg-type]
        if taken:
            pipe.srem(self.ids_key, *{failure.point_id for failure in taken})
        pipe.execute()
        return taken

    def count(self) -> int:
        return int(self._redis.llen(self.key))

    def clear(self) -> None:
        self._redis.delete(self.key, self.ids_key)
