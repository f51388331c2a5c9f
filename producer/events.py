"""Catalogue change events: their format, validation, and publishing to the Redis Stream.

    {"type": "product.upserted", "version": 17, "product": {"id": "...", "name": "...", "description": "...",
     "category": "A | B", "price": "$19.99", "product_url": "https://...", "image_urls": ["https://..."]}}
    {"type": "product.deleted", "version": 18, "product_id": "..."}

``version`` grows per product (a timestamp or a sequence number, integer or decimal, up to 2**53); an event
not newer than what the index holds for that product is stale and ignored. Any system can publish with
``XADD lookalike:events * event '<json>'``; Python code can call :func:`publish_event`.

Validation is the listener's first line of defence, so it is bounded whatever an entry holds: the size is checked
before anything is parsed (``LOOKALIKE_EVENTS_MAX_BYTES``), the nesting depth before ``json.loads`` (which recurses
once per level and raises ``RecursionError``, not ``ValueError``, past about a thousand), and every string the
event hands on must be encodable as UTF-8 (JSON's ``"\\ud800"`` escape decodes to a lone surrogate, which the
registry write would refuse only after the event was accepted).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from lookalike.producer.catalog import usable_image_urls
from lookalike.producer.product import Product
from lookalike.state.errors import EVENT, Rejected

if TYPE_CHECKING:
    from lookalike.config.settings import Settings

UPSERTED = "product.upserted"
DELETED = "product.deleted"
EVENT_FIELD = "event"  # the stream entry's field that holds the JSON
MAX_IMAGES = 100
# An event nests three deep (event -> product -> image_urls); the margin is for fields lookalike ignores.
MAX_DEPTH = 32

# A string, or an unterminated one up to the end: the closing quote is optional so that no match ever fails and
# backtracks (with it required, '"' + '\\"' * 30000 took 15 s); scanning stays linear.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


class EventRejected(Rejected):
    """A malformed event; ``reason`` is a token and ``field`` names the offending field (None: the whole entry)."""

    stage = EVENT

    def __init__(self, reason: str, field: str | None = None, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.field = field

    def __str__(self) -> str:
        text = self.reason + (f": {self.field}" if self.field else "")
        return f"{text} ({self.detail})" if self.detail else text

    def __reduce__(self) -> tuple[Any, ...]:
        # The args are (reason, detail) as for every Rejected; rebuilding needs the field too.
        return (type(self), (self.reason, self.field, self.detail))


@dataclass(frozen=True)
class UpsertEvent:
    version: int | float
    product: Product


@dataclass(frozen=True)
class DeleteEvent:
    version: int | float
    product_id: str


Event = UpsertEvent | DeleteEvent


def _in_range(value: int | float) -> bool:
    # The bound first: math.isfinite(10**400) raises OverflowError, where the comparison is just False.
    return 0 <= value <= 2**53 and math.isfinite(value)


def _version(value: Any) -> int | float:
    if value is None:
        raise EventRejected("missing_field", "version")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventRejected("invalid_field", "version", "must be a number")
    if not _in_range(value):
        raise EventRejected("invalid_field", "version", "must be a finite number from 0 to 2**53")
    return value


def _encodable(text: str, field: str) -> str:
    """``text`` unchanged, once it is known to be writable: a lone surrogate cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EventRejected("invalid_field", field, f"not valid Unicode (lone surrogate at {exc.start})") from exc
    return text


def _identifier(value: Any, field: str) -> str:
    if value is None or value == "":
        raise EventRejected("missing_field", field)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventRejected("invalid_field", field, "must be a string")
    if isinstance(value, int) and abs(value) >= 10**200:  # and str() of a 4,300-digit int raises ValueError
        raise EventRejected("invalid_field", field, "must be 1-200 characters")
    text = str(value).strip()
    if not text or len(text) > 200:
        raise EventRejected("invalid_field", field, "must be 1-200 characters")
    return _encodable(text, field)


def _text(product: Mapping[str, Any], key: str) -> str | None:
    value = product.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventRejected("invalid_field", f"product.{key}", "must be a string or null")
    return _encodable(value, f"product.{key}")


def _price(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise EventRejected("invalid_field", "product.price", "must be a string, a number or null")
    if isinstance(value, int | float):
        if not _in_range(value):
            raise EventRejected("invalid_field", "product.price", "must be a finite number from 0 to 2**53")
        return f"${value:.2f}"
    if isinstance(value, str):
        return _encodable(value, "product.price")
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
    for url in urls:
        _encodable(url, "product.image_urls")
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


def _settings() -> Settings:
    from lookalike.config.settings import get_settings  # at call time: tests and the CLI reset the settings

    return get_settings()


def _size(raw: str | bytes, limit: int) -> int:
    """Bytes of ``raw`` as UTF-8; a str longer than ``limit`` characters is too large without encoding it."""
    if isinstance(raw, bytes) or len(raw) > limit:
        return len(raw)
    return len(raw.encode("utf-8", "surrogatepass"))


def _too_deep(text: str, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (brackets inside strings do not count).

    A linear scan of the brackets left once the strings are removed: no parsing, no recursion.
    """
    depth = 0
    for char in _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if char in "[{" else -1
        if depth > limit:
            return True
    return False


def parse_event(raw: str | bytes | Mapping[str, Any], *, max_bytes: int | None = None) -> Event:
    """Validate one event; raises :class:`EventRejected` naming the field at fault, and nothing else.

    ``max_bytes`` defaults to ``LOOKALIKE_EVENTS_MAX_BYTES``; text over it is refused before it is parsed.
    """
    if isinstance(raw, str | bytes):
        limit = _settings().events_max_bytes if max_bytes is None else max_bytes
        if _size(raw, limit) > limit:
            raise EventRejected("too_large", None, f"over {limit} bytes")
        try:
            # Strict UTF-8: json.loads would decode bytes with "surrogatepass", letting encoded surrogates in.
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            raise EventRejected("invalid_json", None, f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
        if _too_deep(text, MAX_DEPTH):
            raise EventRejected("too_deep", None, f"arrays and objects nest more than {MAX_DEPTH} deep")
        try:
            data = json.loads(text)
        except ValueError as exc:
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
    maxlen: int | None = None,
) -> str:
    """Validate and append one change event to the stream; returns its stream id.

    ``publish_event({"type": "product.deleted", "version": 7, "product_id": "sku-1"})``

    Each append trims the stream to about ``maxlen`` entries (default ``LOOKALIKE_EVENTS_STREAM_MAXLEN``; ``~``:
    Redis trims whole nodes, cheaply), so a stream nobody reads cannot fill Redis's memory.
    """
    if client is None or stream is None:
        from lookalike.config.settings import get_settings
        from lookalike.state.connection import redis_client

        settings = get_settings()
        client = client or redis_client(settings)
        stream = stream or settings.events_stream
    if maxlen is None:
        maxlen = _settings().events_stream_maxlen
    parsed = event if isinstance(event, UpsertEvent | DeleteEvent) else parse_event(event)
    body = event_json(parsed)
    limit = _settings().events_max_bytes
    if len(body.encode("utf-8")) > limit:  # what the listener would refuse is not published
        raise EventRejected("too_large", None, f"over {limit} bytes")
    entry_id = client.xadd(stream, {EVENT_FIELD: body}, maxlen=maxlen, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
