"""Suspected duplicate listings and people's decisions about them, kept in Redis beside the registry.

Three things, under ``<prefix>:duplicates:<collection>:``:

* ``pairs`` - one hash field per suspected *image* pair (two points of two different products whose vectors
  scored at least the detection floor), holding both products, both image URLs and the score. The store
  owner writes them: the index stage for the points it just wrote, `lookalike duplicates scan` for every
  point. Writing a point's pairs first forgets the pairs it had, so a changed image is judged afresh and a
  raised threshold drops what no longer passes. ``of:<product>`` sets index the pairs by product, so a
  deleted product or a removed image leaves its pairs at once (reconcile and audit call :meth:`forget_points`
  and :meth:`forget_products`).
* ``decisions`` - a person's word on a *product* pair: ``distinct`` (never reported again) or ``same`` (kept
  grouped). Nothing but ``mark`` writes or clears them: re-ingests, scans, reindex and reconcile leave them
  alone, which is what makes them survive all four.
* ``scan`` - the full scan's cursor and counts, so an interrupted scan resumes where it stopped.

The report (groups, thresholds) is :mod:`lookalike.state.duplicate_groups`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

DISTINCT = "distinct"
SAME = "same"
DECISIONS = (DISTINCT, SAME)


@dataclass(frozen=True)
class ImagePair:
    """Two points of two different products that look near-identical, ``a_point`` < ``b_point``."""

    a_point: str
    b_point: str
    a: str  # product ids
    b: str
    a_image: str
    b_image: str
    score: float

    @classmethod
    def of(
        cls, point: str, product: str, image: str, other_point: str, other_product: str, other_image: str, score: float
    ) -> ImagePair:
        if point > other_point:
            point, product, image, other_point, other_product, other_image = (
                other_point, other_product, other_image, point, product, image,
            )  # fmt: skip
        return cls(point, other_point, product, other_product, image, other_image, round(float(score), 6))

    @property
    def field(self) -> str:
        return f"{self.a_point} {self.b_point}"

    @property
    def products(self) -> tuple[str, str]:
        return (self.a, self.b) if self.a <= self.b else (self.b, self.a)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ImagePair:
        return cls(**json.loads(text))


def product_pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class Decision:
    a: str
    b: str
    decision: str
    at: float


class DuplicateBook:
    """Pairs, decisions and the scan cursor of one collection."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._redis = client
        self.key = key
        self.pairs_key = f"{key}:pairs"
        self.decisions_key = f"{key}:decisions"
        self.scan_key = f"{key}:scan"

    def _of(self, product_id: str) -> str:
        return f"{self.key}:of:{product_id}"

    # ------------------------------------------------------------------------------------------- pairs
    def replace(self, points: Mapping[str, str], found: Iterable[ImagePair]) -> int:
        """Forget every pair of these points (point id -> product id), then record ``found``; returns how many
        pairs were recorded. The points were just written or re-read: what they match now is the truth."""
        found = list({pair.field: pair for pair in found}.values())
        self.forget_points(points)
        if not found:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self.pairs_key, mapping={pair.field: pair.to_json() for pair in found})
        for pair in found:
            pipe.sadd(self._of(pair.a), pair.field)
            pipe.sadd(self._of(pair.b), pair.field)
        pipe.execute()
        return len(found)

    def forget_points(self, points: Mapping[str, str]) -> int:
        """Drop the pairs of these points (point id -> product id): an image removed, or re-checked."""
        if not points:
            return 0
        by_product: dict[str, set[str]] = {}
        for point, product in points.items():
            by_product.setdefault(product, set()).add(point)
        pipe = self._redis.pipeline(transaction=False)
        for product in by_product:
            pipe.smembers(self._of(product))
        doomed = [
            _text(field)
            for product, fields in zip(by_product, pipe.execute(), strict=True)
            for field in fields
            if set(_text(field).split(" ")) & by_product[product]
        ]
        return self._drop(doomed)

    def forget_products(self, product_ids: Iterable[str]) -> int:
        """Drop every pair of these products (deleted, or gone from the registry)."""
        ids = list(dict.fromkeys(product_ids))
        if not ids:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for product in ids:
            pipe.smembers(self._of(product))
        doomed = [_text(field) for fields in pipe.execute() for field in fields]
        dropped = self._drop(doomed)
        self._redis.delete(*[self._of(product) for product in ids])
        return dropped

    def _drop(self, fields: list[str]) -> int:
        fields = list(dict.fromkeys(fields))
        if not fields:
            return 0
        raw = self._redis.hmget(self.pairs_key, fields)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(self.pairs_key, *fields)
        for field, value in zip(fields, raw, strict=True):
            if value:
                pair = ImagePair.from_json(value)
                pipe.srem(self._of(pair.a), field)
                pipe.srem(self._of(pair.b), field)
        pipe.execute()
        return sum(1 for value in raw if value)

    def pairs(self) -> Iterator[ImagePair]:
        for _field, value in self._redis.hscan_iter(self.pairs_key, count=1000):
            yield ImagePair.from_json(value)

    def count_pairs(self) -> int:
        return int(self._redis.hlen(self.pairs_key))

    # --------------------------------------------------------------------------------------- decisions
    @staticmethod
    def _decision_field(a: str, b: str) -> str:
        return json.dumps(list(product_pair(a, b)), ensure_ascii=False)

    def decide(self, a: str, b: str, decision: str) -> Decision:
        if decision not in DECISIONS:
            raise ValueError(f"a decision is one of {', '.join(DECISIONS)}, not {decision!r}")
        if a == b:
            raise ValueError("a product is not a duplicate of itself: give two different product ids")
        made = Decision(*product_pair(a, b), decision=decision, at=round(time.time(), 3))
        self._redis.hset(
            self.decisions_key, self._decision_field(a, b), json.dumps({"decision": decision, "at": made.at})
        )
        return made

    def decisions(self) -> dict[tuple[str, str], Decision]:
        found = {}
        for field, value in self._redis.hscan_iter(self.decisions_key, count=1000):
            a, b = json.loads(field)
            data = json.loads(value)
            found[(a, b)] = Decision(a, b, str(data["decision"]), float(data.get("at", 0)))
        return found

    # -------------------------------------------------------------------------------------------- scan
    def scan_state(self) -> dict[str, Any]:
        raw = {_text(k): _text(v) for k, v in self._redis.hgetall(self.scan_key).items()}
        return {key: json.loads(value) for key, value in raw.items()}

    def save_scan(self, **values: Any) -> None:
        self._redis.hset(self.scan_key, mapping={key: json.dumps(value) for key, value in values.items()})

    def reset_scan(self) -> None:
        self._redis.delete(self.scan_key)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def duplicate_book(client: redis.Redis, key_prefix: str, collection: str) -> DuplicateBook:
    return DuplicateBook(client, f"{key_prefix}:duplicates:{collection}")
