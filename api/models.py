"""The HTTP bodies, as pydantic models: they parse what comes in and generate the OpenAPI schema.

They are the HTTP shape of :class:`~lookalike.state.search.SearchRequest`, not a second rule book: each field's
limits are the query model's own constants (``MAX_K``, ``MAX_CATEGORY_CHARS``...), stated here so the schema
shows them, and each body turns itself into a ``SearchRequest`` (``request()``), which the backend validates,
once. The narrowing fields and the paging fields are written once (:class:`Narrowing`, :class:`Window`) and
shared by the JSON body, the multipart form and the "similar" query string. The answer is the backend's data
as is; the response models only describe that JSON for the schema (and for the contract tests that check it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lookalike.state.search import (
    MAX_CATEGORY_CHARS,
    MAX_K,
    MAX_OFFSET,
    MAX_TEXT_CHARS,
    Filters,
    Mode,
    SearchRequest,
)

MAX_IMAGE_URL_CHARS = 2000  # an HTTP-side cap on the body; the URL's own rules are the query model's


class Narrowing(BaseModel):
    """Narrowing for any query: a category (any level of "A | B | C"), a price range, a lowest score."""

    category: str | None = Field(None, min_length=1, max_length=MAX_CATEGORY_CHARS)
    min_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    min_score: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)

    def filters(self) -> Filters:
        return Filters(self.category, self.min_price, self.max_price, self.min_score)


class Window(BaseModel):
    """Which page of the results: ``k`` products after the best ``offset``."""

    k: int = Field(5, ge=1, le=MAX_K, description="How many products to return.")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="How many of the best to skip (paging).")


class FiltersIn(Narrowing):
    # Strict: JSON's own types only (no "5" for 5, no false for 0), as the schema says.
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchJSON(Window):
    """A JSON search: exactly one of ``image_url`` or ``text`` (a photo is sent as multipart instead)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image_url: str | None = Field(
        None, min_length=1, max_length=MAX_IMAGE_URL_CHARS, description="http(s) URL of a photo."
    )
    text: str | None = Field(
        None, min_length=1, max_length=MAX_TEXT_CHARS, description="Words describing the product."
    )
    mode: Mode = Field("hybrid", description="For words: both signals fused, CLIP text only, or keywords only.")
    filters: FiltersIn | None = None
    diverse: bool = Field(False, description="Spread the results over categories.")
    facets: bool = Field(False, description="Also return category counts for the same query and filters.")

    def request(self) -> SearchRequest:
        return SearchRequest(
            image_url=self.image_url,
            text=self.text,
            k=self.k,
            offset=self.offset,
            mode=self.mode,
            filters=self.filters.filters() if self.filters else Filters(),
            diverse=self.diverse,
            facets=self.facets,
        )


class SearchForm(Window, Narrowing):
    """A multipart search: the photo in ``image`` and the same options as form fields."""

    model_config = ConfigDict(extra="forbid")

    image: bytes = Field(description="The photo (JPEG, PNG, GIF, WebP or BMP).", json_schema_extra={"format": "binary"})
    mode: Mode = "hybrid"
    diverse: bool = False
    facets: bool = False

    @field_validator("diverse", "facets", mode="before")
    @classmethod
    def _true_or_false(cls, value: object) -> object:
        """A form field is text: only ``true`` and ``false`` are booleans (what the schema promises), not
        pydantic's lax ``0``/``on``/``yes``."""
        if isinstance(value, str) and value.lower() not in ("true", "false"):
            raise ValueError("must be true or false")
        return value

    def request(self) -> SearchRequest:
        return SearchRequest(
            image=self.image,
            prepared=True,  # the API reduced the upload to the model's input already (backend.reduce_upload)
            k=self.k,
            offset=self.offset,
            mode=self.mode,
            filters=self.filters(),
            diverse=self.diverse,
            facets=self.facets,
        )


class SimilarQuery(Window, Narrowing):
    """The query string of "more like this"."""

    def request(self, product_id: str) -> SearchRequest:
        return SearchRequest(product_id=product_id, k=self.k, offset=self.offset, filters=self.filters())


class Hit(BaseModel):
    """One product: ``SearchHit.to_data()``."""

    product_id: str
    name: str | None
    match: float = Field(
        ge=0, le=1,
        description="How well it matches, 0-1, the same meaning in every mode (a photo, words, more like this).",
    )  # fmt: skip
    score: float = Field(description="The engine's raw score: cosine, BM25 or a fusion score, by mode.")
    image_url: str | None = Field(description="The catalogue's own image URL (never proxied by this server).")
    product_url: str | None
    category: str | None
    price: str | None
    price_value: float | None
    matched: list[str] = Field(description="Which signals found it: image, text, keyword.")


class SearchOut(BaseModel):
    """The backend's answer (``SearchResponse.to_data()``) plus the time the search took."""

    results: list[Hit] = Field(description="Best first, one entry per product.")
    no_close_match: bool = Field(
        description="No result's match reaches 0.5 (state/search.py CLOSE_MATCH): nothing in the catalogue is "
        "close, these are only the nearest."
    )
    facets: dict[str, int] | None = Field(
        None,
        description='When asked for: category path ("A", "A | B", ...) -> products among the query\'s matches '
        "under it, a tree by its keys.",
    )
    mode: Mode | None = Field(None, description="For words: the mode that ran (keyword when no text model loads).")
    note: str | None = Field(None, description="Why the answer is not exactly what was asked (a fallback).")
    took_ms: float = Field(description="Milliseconds spent answering, as measured by the API.")


class ErrorOut(BaseModel):
    """Every error, whatever the status: a stable reason token, a human detail, the request id."""

    error: str = Field(description="Stable reason token (bad_k, too_large, not_an_image, unknown_product...).")
    detail: str
    request_id: str


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]
    conditions: list[str] = Field(
        default_factory=list,
        description="What stops indexing now, one line each (e.g. 'store: disk full at PATH (N MiB free)'); "
        "absent when nothing does. Searches still answer.",
    )


class HealthOut(BaseModel):
    status: Literal["ok"]
