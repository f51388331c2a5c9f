"""The query: a shopper's image -> the catalogue products that look most like it, one entry per product."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from pathlib import Path
from typing import Any

from lookalike.worker.decode import ImageRejected, decode_image
from lookalike.worker.embed import Embedder
from lookalike.worker.fetch import FetchLimits, fetch_image
from lookalike.worker.store import Hit, VectorStore

MAX_K = 100
MAX_CANDIDATES = 2000


class QueryError(ValueError):
    """The query cannot be answered as asked; ``reason`` is a short stable token.

    Its args are exactly (reason, detail), so it survives Celery's JSON result encoding intact.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def load_query_image(
    source: dict[str, Any], *, max_bytes: int, session: Any = None, limits: FetchLimits | None = None
) -> bytes:
    """The query image's bytes from exactly one of ``image_b64``, ``path`` or ``url``."""
    given = [key for key in ("image_b64", "path", "url") if source.get(key)]
    if len(given) != 1:
        raise QueryError("bad_query", "give exactly one of image_b64, path or url")
    if source.get("image_b64"):
        text = str(source["image_b64"])
        if len(text) > (max_bytes * 4) // 3 + 8:
            raise QueryError("too_large", f"query image over {max_bytes} bytes")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise QueryError("bad_base64", str(exc)) from exc
    if source.get("path"):
        path = Path(str(source["path"]))
        if not path.is_file():
            raise QueryError("not_found", f"{path} is not a file")
        if path.stat().st_size > max_bytes:
            raise QueryError("too_large", f"{path} is over {max_bytes} bytes")
        return path.read_bytes()
    if session is None or limits is None:
        raise QueryError("bad_query", "URL queries need a download session")
    capped = dataclasses.replace(limits, max_bytes=min(limits.max_bytes, max_bytes))
    return fetch_image(str(source["url"]), session, capped).data


def best_per_product(hits: list[Hit], k: int) -> list[Hit]:
    """Keep each product's best-scoring image, in score order (hits arrive best first)."""
    best: dict[str, Hit] = {}
    for hit in hits:
        product_id = str(hit.payload.get("product_id"))
        if product_id not in best:
            best[product_id] = hit
    return list(best.values())[:k]


def search_products(
    image: bytes,
    *,
    k: int,
    category: str | None,
    embedder: Embedder,
    store: VectorStore,
    max_pixels: int,
    formats: frozenset[str],
) -> list[dict[str, Any]]:
    """Rank products by their best image's cosine similarity to ``image``. Raises ImageRejected/QueryError."""
    if not 1 <= k <= MAX_K:
        raise QueryError("bad_k", f"k must be between 1 and {MAX_K}")
    prepared = decode_image(image, max_pixels=max_pixels, formats=formats)
    vector = embedder.embed([prepared])[0]
    limit = k * 4
    while True:
        hits = store.search(vector, limit, category)
        products = best_per_product(hits, k)
        # Products with many near-identical images can crowd the first page: widen until k products show.
        if len(products) >= k or len(hits) < limit or limit >= MAX_CANDIDATES:
            break
        limit = min(limit * 4, MAX_CANDIDATES)
    return [
        {
            "product_id": hit.payload.get("product_id"),
            "name": hit.payload.get("name"),
            "score": round(hit.score, 6),
            "image_url": hit.payload.get("image_url"),
            "product_url": hit.payload.get("product_url"),
            "category": hit.payload.get("category"),
            "price": hit.payload.get("price"),
        }
        for hit in products
    ]


__all__ = ["ImageRejected", "QueryError", "best_per_product", "load_query_image", "search_products"]
