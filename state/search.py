"""The one query model: what a shopper asks (a photo, an image URL, words, or "more like this product"), the
filters that narrow it, and the results, one entry per product.

The CLI, the query task and the HTTP API all build a :class:`SearchRequest`, and all print or return
:meth:`SearchResponse.to_data`; so ``search --json``, the task's result and the API's body are the same JSON.
A request is validated where it is built (:meth:`SearchRequest.validate`), so a bad value is a one-line error
naming it before anything is sent anywhere.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from lookalike.state.errors import QUERY, Rejected

# The limits of a request, written once: validate() checks them, the API's schema states them.
MAX_K = 100
MAX_OFFSET = 1000
MAX_TEXT_CHARS = 1000
MAX_CATEGORY_CHARS = 500
MAX_PRODUCT_ID_CHARS = 200
Mode = Literal["hybrid", "semantic", "keyword"]
MODES: tuple[Mode, ...] = get_args(Mode)
# Which signal found a result.
IMAGE, TEXT, KEYWORD = "image", "text", "keyword"
# A result's ``match`` (0-1, the same meaning in every mode, see ``lookalike.worker.relevance``) below this for
# every result of an answer: the answer says ``no_close_match`` (the CLI and the page say so too).
CLOSE_MATCH = 0.5


class QueryRejected(Rejected):
    """The query cannot be answered as asked (bad field, undecodable image, a refused URL...)."""

    stage = QUERY


@dataclass(frozen=True)
class Filters:
    """Narrowing that applies to every kind of query."""

    category: str | None = None  # any level of the "A | B | C" path
    min_price: float | None = None
    max_price: float | None = None
    min_score: float | None = None

    def validate(self) -> Filters:
        for name in ("min_price", "max_price", "min_score"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise QueryRejected("bad_filter", f"{name} must be a finite number, not {value!r}")
            if name != "min_score" and value < 0:
                raise QueryRejected("bad_filter", f"{name} must be 0 or more, not {value!r}")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise QueryRejected("bad_filter", f"min_price {self.min_price:g} is above max_price {self.max_price:g}")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise QueryRejected("bad_filter", f"min_score must be between -1 and 1, not {self.min_score!r}")
        if self.category is not None and (not self.category.strip() or len(self.category) > MAX_CATEGORY_CHARS):
            raise QueryRejected(
                "bad_filter", f"category must be a non-empty text of at most {MAX_CATEGORY_CHARS} characters"
            )
        return self

    @property
    def empty(self) -> bool:
        return all(value is None for value in (self.category, self.min_price, self.max_price, self.min_score))

    def to_message(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_message(cls, message: dict[str, Any] | None) -> Filters:
        message = message or {}
        unknown = set(message) - {"category", "min_price", "max_price", "min_score"}
        if unknown:
            raise QueryRejected("bad_filter", f"unknown filter {sorted(unknown)[0]!r}")
        return cls(**message)


@dataclass(frozen=True)
class SearchRequest:
    """Exactly one of ``image`` (bytes), ``image_url``, ``text`` or ``product_id`` (similar products)."""

    image: bytes | None = None
    image_url: str | None = None
    text: str | None = None
    product_id: str | None = None
    k: int = 5
    offset: int = 0
    filters: Filters = field(default_factory=Filters)
    mode: Mode = "hybrid"  # for text: both signals fused, CLIP text only, or BM25 keywords only
    diverse: bool = False
    facets: bool = False
    # The image was encoded already (by the encode task): its vector travels beside the request, the bytes don't.
    encoded: bool = False
    # ``image`` is the model-sized transport JPEG already (lookalike.worker.prepare), made where the query arrived.
    prepared: bool = False
    # A collection other than the live one (`lookalike reindex` evaluates its shadow collection beside the live
    # one); set by lookalike's own commands only, never from HTTP.
    collection: str | None = None

    @property
    def needs_vector(self) -> bool:
        """Searched with a dense vector computed from its input: an image, or words in hybrid or semantic mode
        ("similar" uses the product's stored vectors; keyword mode none)."""
        if self.kind == "image":
            return True
        return self.kind == "text" and self.mode != "keyword"

    def encoded_form(self) -> SearchRequest:
        """The request as the store owner gets it once its vector is computed: without the image or its URL."""
        if self.kind != "image":
            return self
        return replace(self, image=None, image_url=None, encoded=True, prepared=False)

    @property
    def kind(self) -> str:
        """``image`` (bytes or URL), ``text`` or ``similar``."""
        if self.text is not None:
            return "text"
        if self.product_id is not None:
            return "similar"
        return "image"

    def validate(self, *, max_image_bytes: int | None = None) -> SearchRequest:
        given = [name for name in ("image", "image_url", "text", "product_id") if getattr(self, name) is not None]
        if len(given) != 1 and not (self.encoded and not given):
            raise QueryRejected(
                "bad_query", "give exactly one of an image, an image URL, words or a product id"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise QueryRejected("bad_k", f"k must be between 1 and {MAX_K}, not {self.k!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or not 0 <= self.offset <= MAX_OFFSET:
            raise QueryRejected("bad_offset", f"offset must be between 0 and {MAX_OFFSET}, not {self.offset!r}")
        if self.mode not in MODES:
            raise QueryRejected("bad_mode", f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.text is not None and (not self.text.strip() or len(self.text) > MAX_TEXT_CHARS):
            raise QueryRejected("bad_text", f"words must be a non-empty text of at most {MAX_TEXT_CHARS} characters")
        if self.product_id is not None and (not self.product_id.strip() or len(self.product_id) > MAX_PRODUCT_ID_CHARS):
            raise QueryRejected(
                "bad_product_id", f"a product id is a non-empty text of at most {MAX_PRODUCT_ID_CHARS} characters"
            )
        if self.image_url is not None and not self.image_url.startswith(("http://", "https://")):
            raise QueryRejected("bad_scheme", "an image URL must start with http:// or https://")
        if self.prepared and self.image is None:
            raise QueryRejected("bad_query", "a prepared query carries its image")
        if self.image is not None:
            if not self.image:
                raise QueryRejected("empty", "the image is empty")
            if max_image_bytes is not None and len(self.image) > max_image_bytes:
                raise QueryRejected("too_large", f"the image is over {max_image_bytes} bytes")
        self.filters.validate()
        return self

    def with_window(self, k: int, offset: int) -> SearchRequest:
        return replace(self, k=k, offset=offset)

    def describe(self) -> str:
        """What Flower and logs show: the kind and its size, never the image bytes or the words in full."""
        if self.image is not None:
            form = "prepared image" if self.prepared else "image"
            return f"[search: {form} of {len(self.image)} bytes, k={self.k}]"
        if self.image_url is not None:
            return f"[search: {self.image_url[:200]}, k={self.k}]"
        if self.encoded:
            return f"[search: an encoded image, k={self.k}]"
        if self.text is not None:
            return f"[search: {self.mode} words ({len(self.text)} chars), k={self.k}]"
        return f"[similar: {self.product_id}, k={self.k}]"

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"k": self.k, "offset": self.offset, "mode": self.mode}
        if self.image is not None:
            message["image_b64"] = base64.b64encode(self.image).decode("ascii")
        for name in ("image_url", "text", "product_id"):
            if getattr(self, name) is not None:
                message[name] = getattr(self, name)
        if not self.filters.empty:
            message["filters"] = self.filters.to_message()
        if self.diverse:
            message["diverse"] = True
        if self.facets:
            message["facets"] = True
        if self.encoded:
            message["encoded"] = True
        if self.prepared:
            message["prepared"] = True
        if self.collection is not None:
            message["collection"] = self.collection
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any], *, max_image_bytes: int | None = None) -> SearchRequest:
        """Parse and validate; every problem is a :class:`QueryRejected`."""
        if not isinstance(message, dict):
            raise QueryRejected("bad_query", "a search request is a JSON object")
        known = {
            "image_b64", "image_url", "text", "product_id", "k", "offset", "mode", "filters", "diverse", "facets",
            "encoded", "prepared", "collection",
        }  # fmt: skip
        unknown = set(message) - known
        if unknown:
            raise QueryRejected("bad_query", f"unknown field {sorted(unknown)[0]!r}")
        image = None
        if message.get("image_b64") is not None:
            text = str(message["image_b64"])
            if max_image_bytes is not None and len(text) > (max_image_bytes * 4) // 3 + 8:
                raise QueryRejected("too_large", f"the image is over {max_image_bytes} bytes")
            try:
                image = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise QueryRejected("bad_base64", str(exc)) from exc
        try:
            request = cls(
                image=image,
                image_url=_text(message, "image_url"),
                text=_text(message, "text"),
                product_id=_text(message, "product_id"),
                k=message.get("k", 5),
                offset=message.get("offset", 0),
                filters=Filters.from_message(message.get("filters")),
                mode=message.get("mode", "hybrid"),
                diverse=bool(message.get("diverse", False)),
                facets=bool(message.get("facets", False)),
                encoded=bool(message.get("encoded", False)),
                prepared=bool(message.get("prepared", False)),
                collection=_text(message, "collection"),
            )
        except TypeError as exc:
            raise QueryRejected("bad_query", str(exc)) from exc
        return request.validate(max_image_bytes=max_image_bytes)


def _text(message: dict[str, Any], name: str) -> str | None:
    value = message.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise QueryRejected("bad_query", f"{name} must be a text")
    return value


@dataclass(frozen=True)
class SearchHit:
    """One product in the results: its best-matching image, and which signals found it."""

    product_id: str
    name: str | None
    score: float
    image_url: str | None
    product_url: str | None
    category: str | None
    price: str | None
    price_value: float | None
    matched: tuple[str, ...] = ()
    # How well it matches, for people: 0 (nothing alike) to 1 (the same), comparable across modes; ``score`` is
    # the engine's raw number (cosine, BM25 or a fusion score by mode), kept for programs.
    match: float = 0.0

    def to_data(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "name": self.name,
            "match": round(self.match, 3),
            "score": round(self.score, 6),
            "image_url": self.image_url,
            "product_url": self.product_url,
            "category": self.category,
            "price": self.price,
            "price_value": self.price_value,
            "matched": list(self.matched),
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> SearchHit:
        return cls(
            product_id=str(data["product_id"]),
            name=data.get("name"),
            score=float(data["score"]),
            image_url=data.get("image_url"),
            product_url=data.get("product_url"),
            category=data.get("category"),
            price=data.get("price"),
            price_value=data.get("price_value"),
            matched=tuple(data.get("matched") or ()),
            match=float(data.get("match") or 0.0),
        )


@dataclass(frozen=True)
class SearchResponse:
    results: tuple[SearchHit, ...]
    # Category path ("A", "A | B", ...) -> products among the query's matches under it (see worker/query.py).
    facets: dict[str, int] | None = None
    mode: str | None = None  # for words: the mode that ran (keyword when no text model could load)
    note: str | None = None  # why the answer is not what was asked (a fallback), for people

    @property
    def no_close_match(self) -> bool:
        """No result reaches :data:`CLOSE_MATCH`: what was found is only the least unlike."""
        return not any(hit.match >= CLOSE_MATCH for hit in self.results)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "results": [hit.to_data() for hit in self.results],
            "no_close_match": self.no_close_match,
        }
        if self.facets is not None:
            data["facets"] = dict(self.facets)
        if self.mode is not None:
            data["mode"] = self.mode
        if self.note is not None:
            data["note"] = self.note
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> SearchResponse:
        """A task result back into a response; a refusal (``{"error": ...}``) is raised as QueryRejected."""
        if "error" in data:
            raise QueryRejected(str(data["error"]), str(data.get("detail") or ""))
        facets = data.get("facets")
        return cls(
            results=tuple(SearchHit.from_data(hit) for hit in data.get("results", [])),
            facets=None if facets is None else {str(k): int(v) for k, v in facets.items()},
            mode=data.get("mode"),
            note=data.get("note"),
        )
