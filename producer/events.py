"""Catalogue change events: their format, validation, and publishing to the Redis Stream.

    {"type": "product.upserted", "version": 17, "product": {"id": "...", "name": "...", "description": "...",
     "category": "A | B", "price": "$19.99", "product_url": "https://...", "image_urls": ["https://..."]}}
    {"type": "product.deleted", "version": 18, "product_id": "..."}

``version`` grows per product (a timestamp or a sequence number, integer or decimal, up to 2**53); an event
not newer than what the index holds for that product is stale and ignored. Any system can publish with
``XADD lookalike:events * event '<json>'``; Python code can call :func:`publish_event`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from lookalike.producer.catalog import usable_image_urls
from lookalike.producer.product import Product

UPSERTED = "product.upserted"
DELETED = "product.deleted"
EVENT_FIELD = "event"  # the stream entry's field that holds the JSON
MAX_EVENT_BYTES = 1_000_000
MAX_IMAGES = 100
STREAM_MAXLEN = 1_000_000


class EventRejected(ValueError):
    """A malformed event; ``reason`` is a token and ``field`` names the offending field."""

    def __init__(self, reason: str, field: str | None = None, detail: str = "") -> None:
        super().__init__(reason, field, detail)
        self.reason = reason
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        text = self.reason + (f": {self.field}" if self.field else "")
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class UpsertEvent:
    version: int | float
    product: Product


@dataclass(frozen=True)
class DeleteEvent:
    version: int | float
    product_id: str


Event = UpsertEvent | DeleteEvent


def _version(value: Any) -> int | float:
    if value is None:
        raise EventRejected("missing_field", "version")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventRejected("invalid_field", "version", "must be a number")
    if not math.isfinite(value) or value < 0 or abs(value) > 2**53:
        raise EventRejected("invalid_field", "version", "must be a finite number from 0 to 2**53")
    return value


def _identifier(value: Any, field: str) -> str:
    if value is None or value == "":
        raise EventRejected("missing_field", field)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventRejected("invalid_field", field, "must be a string")
    text = str(value).strip()
    if not text or len(text) > 200:
        raise EventRejected("invalid_field", field, "must be 1-200 characters")
    return text


def _text(product: Mapping[str, Any], key: str) -> str | None:
    value = product.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventRejected("invalid_field", f"product.{key}", "must be a string or null")
    return value


def _price(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise EventRejected("invalid_field", "product.price", "must be a string, a number or null")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise EventRejected("invalid_field", "product.price", "must be a non-negative number")
        return f"${value:.2f}"
    if isinstance(value, str):
        return value
    raise EventRejected("invalid_field", "product.price", "must be a string, a number or null")


def _product(value: Any) -> Product:
    if value is None:
        raise EventRejected("missing_field", "product")
    if not isinstance(value, Mapping):
        raise EventRejected("invalid_field", "product", "must be an object")
    product_id = _identifier(value.get("id"), "product.id")
    if "image_urls" not in value:
        raise EventRejected("missing_field", "product.image_urls")
    urls = value["image_urls"]
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise EventRejected("invalid_field", "product.image_urls", "must be a list of strings")
    if len(urls) > MAX_IMAGES:
        raise EventRejected("invalid_field", "product.image_urls", f"more than {MAX_IMAGES} images")
    kept, _reason = usable_image_urls([url.strip() for url in urls], frozenset())
    return Product.build(
        id=product_id,
        name=_text(value, "name"),
        image_urls=kept,
        description=_text(value, "description"),
        category=_text(value, "category"),
        price=_price(value.get("price")),
        product_url=_text(value, "product_url"),
    )


def parse_event(raw: str | bytes | Mapping[str, Any]) -> Event:
    """Validate one event; raises :class:`EventRejected` naming the field at fault."""
    if isinstance(raw, str | bytes):
        if len(raw) > MAX_EVENT_BYTES:
            raise EventRejected("too_large", None, f"over {MAX_EVENT_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventRejected("invalid_json", None, str(exc)[:120]) from exc
    else:
        data = raw
    if not isinstance(data, Mapping):
        raise EventRejected("not_an_object", None, "an event is a JSON object")
    kind = data.get("type")
    if kind is None:
        raise EventRejected("missing_field", "type")
    if kind == UPSERTED:
        return UpsertEvent(_version(data.get("version")), _product(data.get("product")))
    if kind == DELETED:
        return DeleteEvent(_version(data.get("version")), _identifier(data.get("product_id"), "product_id"))
    raise EventRejected("unknown_type", "type", f"{str(kind)[:60]!r} is not {UPSERTED} or {DELETED}")


def event_json(event: Event) -> str:
    if isinstance(event, UpsertEvent):
        body: dict[str, Any] = {"type": UPSERTED, "version": event.version, "product": event.product.to_dict()}
    else:
        body = {"type": DELETED, "version": event.version, "product_id": event.product_id}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def publish_event(
    event: Mapping[str, Any] | Event,
    *,
    client: redis.Redis | None = None,
    stream: str | None = None,
) -> str:
    """Validate and append one change event to the stream; returns its stream id.

    ``publish_event({"type": "product.deleted", "version": 7, "product_id": "sku-1"})``
    """
    if client is None or stream is None:
        from lookalike.config.settings import get_settings
        from lookalike.state.connection import redis_client

        settings = get_settings()
        client = client or redis_client(settings)
        stream = stream or settings.events_stream
    parsed = event if isinstance(event, UpsertEvent | DeleteEvent) else parse_event(event)
    entry_id = client.xadd(stream, {EVENT_FIELD: event_json(parsed)}, maxlen=STREAM_MAXLEN, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
