"""The product registry: what the catalogue says each product is now, kept in Redis.

One hash field per product holds its latest version, its payload and its image URLs (or a tombstone after a
delete). It is what makes change events cheap and safe:

* a version not newer than the registered one is stale and changes nothing (compare-and-set in Lua, so two
  listeners cannot both apply);
* the diff against the previous entry says what to do: new images to embed, removed images to delete,
  a payload to update in place;
* the index stage reads the entry when it writes a point, so a point always gets the product's current
  fields and an image removed (or a product deleted) while its job was queued is never written back.

An applied version stays *pending* (a second hash) until the producer has enqueued its work and settles it.
If the producer dies in between, the next producer to touch the product sees the pending mark and redoes the
product's work in full (every image, and a reconcile), so a crash between "registered" and "enqueued" loses
nothing; re-delivering the same event does the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

_APPLY_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
local pending = redis.call('HGET', KEYS[2], ARGV[1])
if current then
  local version = tonumber(cjson.decode(current)['v'])
  if version ~= nil and version >= tonumber(ARGV[2]) then
    return {0, current, pending or ''}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {1, current or '', pending or ''}
"""

_SETTLE = """
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
"""


def version_text(version: int | float) -> str:
    return str(int(version)) if float(version).is_integer() else repr(float(version))


@dataclass(frozen=True)
class ProductState:
    version: int | float
    deleted: bool
    payload: dict[str, Any]
    images: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"v": self.version, "deleted": self.deleted, "payload": self.payload, "images": list(self.images)},
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ProductState:
        data = json.loads(text)
        return cls(
            version=data["v"],
            deleted=bool(data.get("deleted")),
            payload=dict(data.get("payload") or {}),
            images=tuple(data.get("images") or ()),
        )

    def wants(self, image_url: str) -> bool:
        return not self.deleted and image_url in self.images


@dataclass(frozen=True)
class Applied:
    """The new state was stored; ``previous`` is what it replaced (None for a product never seen).

    ``previous_unfinished``: the previous version's work was never settled (its producer died), so the
    diff against it cannot be trusted.
    """

    previous: ProductState | None
    previous_unfinished: bool = False


@dataclass(frozen=True)
class Stale:
    """The registry already holds this version or a newer one; nothing was changed.

    ``replay``: it holds exactly this version and its work was never settled - the same change delivered
    again after its producer died, whose work must be redone.
    """

    current: ProductState
    replay: bool = False


class ProductRegistry:
    def __init__(self, client: redis.Redis, key: str) -> None:
        self._redis = client
        self.key = key
        self.pending_key = f"{key}:pending"
        self._apply = client.register_script(_APPLY_IF_NEWER)
        self._settle = client.register_script(_SETTLE)

    def _args(self, product_id: str, state: ProductState) -> list[str]:
        return [product_id, version_text(state.version), state.to_json()]

    def apply(self, product_id: str, state: ProductState) -> Applied | Stale:
        reply = self._apply(keys=[self.key, self.pending_key], args=self._args(product_id, state))
        return self._interpret(reply, state)

    def settle(self, applied: Iterable[tuple[str, int | float]]) -> None:
        """Mark these (product, version) as done: their jobs and reconciles are on the queue."""
        args: list[str] = []
        for product_id, version in applied:
            args += [product_id, version_text(version)]
        if args:
            self._settle(keys=[self.pending_key], args=args)

    def pending(self) -> dict[str, str]:
        raw = self._redis.hgetall(self.pending_key)
        return {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]

    def apply_many(self, updates: Iterable[tuple[str, ProductState]]) -> list[Applied | Stale]:
        """Compare-and-set many products in one round trip (each one atomic on its own)."""
        pipe = self._redis.pipeline(transaction=False)
        states = []
        for product_id, state in updates:
            self._apply(keys=[self.key, self.pending_key], args=self._args(product_id, state), client=pipe)
            states.append(state)
        if not states:
            return []
        return [self._interpret(reply, state) for reply, state in zip(pipe.execute(), states, strict=True)]

    @staticmethod
    def _interpret(reply: list[Any], state: ProductState) -> Applied | Stale:
        stored, other, pending = int(reply[0]), reply[1], reply[2]
        if isinstance(pending, bytes):
            pending = pending.decode()
        if stored:
            return Applied(ProductState.from_json(other) if other else None, previous_unfinished=bool(pending))
        return Stale(ProductState.from_json(other), replay=pending == version_text(state.version))

    def get(self, product_id: str) -> ProductState | None:
        raw = self._redis.hget(self.key, product_id)
        return ProductState.from_json(raw) if raw else None

    def get_many(self, product_ids: Iterable[str]) -> dict[str, ProductState | None]:
        ids = list(dict.fromkeys(product_ids))
        if not ids:
            return {}
        values = self._redis.hmget(self.key, ids)
        return {pid: ProductState.from_json(raw) if raw else None for pid, raw in zip(ids, values, strict=True)}

    def items(self) -> Iterator[tuple[str, ProductState]]:
        for product_id, raw in self._redis.hscan_iter(self.key, count=1000):
            yield (product_id.decode() if isinstance(product_id, bytes) else product_id), ProductState.from_json(raw)

    def live_ids(self) -> set[str]:
        return {pid for pid, state in self.items() if not state.deleted}

    def count(self) -> int:
        return int(self._redis.hlen(self.key))

    def clear(self) -> None:
        self._redis.delete(self.key, self.pending_key)
