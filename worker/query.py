"""The query: a shopper's photo, image URL, words or product -> the catalogue products that match, one entry
per product (its best image first).

:func:`run_search` is the one search function: the query task, ``lookalike search``/``similar`` in-process and
the API's in-process fallback all call it with a :class:`~lookalike.state.search.SearchRequest`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from lookalike.config.settings import Settings
from lookalike.state.errors import NeedsReindex, Rejected
from lookalike.state.search import IMAGE, KEYWORD, TEXT, QueryRejected, SearchHit, SearchRequest, SearchResponse
from lookalike.worker.decode import decode_transport
from lookalike.worker.embed import Embedder
from lookalike.worker.keywords import query_vector, shares_a_word
from lookalike.worker.prepare import QueryPreparer
from lookalike.worker.store import Hit, Narrowing, VectorStore

MAX_CANDIDATES = 2000


def best_per_product(hits: list[Hit]) -> list[Hit]:
    """Keep each product's best-scoring image, in score order (hits arrive best first)."""
    best: dict[str, Hit] = {}
    for hit in hits:
        product_id = str(hit.payload.get("product_id"))
        if product_id not in best:
            best[product_id] = hit
    return list(best.values())


def to_result(hit: Hit, matched: tuple[str, ...]) -> SearchHit:
    payload = hit.payload
    price_value = payload.get("price_value")
    return SearchHit(
        product_id=str(payload.get("product_id")),
        name=payload.get("name"),
        score=float(hit.score),
        image_url=payload.get("image_url"),
        product_url=payload.get("product_url"),
        category=payload.get("category"),
        price=payload.get("price"),
        price_value=None if price_value is None else float(price_value),
        matched=matched,
    )


def paged_products(search: Callable[[int], list[Hit]], *, k: int, offset: int) -> list[Hit]:
    """Products ``offset``..``offset + k`` from a ranked point search, one per product.

    Products with many near-identical images can crowd the candidates: widen until enough products show, or
    the engine has no more. The order is the engine's (score, then id), so pages are stable.
    """
    wanted = offset + k
    limit = wanted * 4
    while True:
        hits = search(limit)
        products = best_per_product(hits)
        if len(products) >= wanted or len(hits) < limit or limit >= MAX_CANDIDATES:
            return products[offset:wanted]
        limit = min(limit * 4, MAX_CANDIDATES)


DIVERSITY = 0.5  # MMR's trade-off for --diverse: half relevance, half novelty
HYBRID_CANDIDATES = 100  # each side's prefetch in a hybrid query (at least the page asked for)


def encode_request(
    request: SearchRequest,
    *,
    embedder: Callable[[], Embedder],
    settings: Settings,
    text_embedder: Callable[[], Any] | None = None,
) -> np.ndarray | None:
    """The request's dense vector: its prepared image (the transport JPEG, :mod:`lookalike.worker.prepare`)
    embedded, or its words embedded by CLIP's text model. Runs on the query encoding processes, never on the store
    owner, and never downloads: an image URL was fetched where the query arrived. Refusals are
    :class:`QueryRejected`."""
    if not request.needs_vector:
        return None
    if request.kind == "text":
        assert request.text is not None
        if text_embedder is None:
            from lookalike.worker.text import TextEmbedder

            return TextEmbedder.for_settings(settings).embed([request.text])[0]
        return text_embedder().embed([request.text])[0]
    if not request.prepared or request.image is None:
        raise QueryRejected(
            "not_prepared", "a query's image is reduced to the model's input before it is sent (QueryPreparer)"
        )
    try:
        prepared = decode_transport(request.image)
    except Rejected as exc:
        raise QueryRejected(exc.reason, exc.detail) from exc
    return embedder().embed([prepared])[0]


def search_request(request: SearchRequest, vector: np.ndarray | None, *, store: VectorStore) -> SearchResponse:
    """Search the store for a validated request, with its vector already computed (``encode_request``):
    no download, no model. One entry per product, its best image, best first; pages by ``offset``."""
    if request.needs_vector and vector is None:
        raise QueryRejected("not_encoded", "this query needs its vector computed first (the lookalike.encode task)")
    filters = request.filters
    narrowing = Narrowing(category=filters.category, min_price=filters.min_price, max_price=filters.max_price)
    threshold = filters.min_score
    diversity = DIVERSITY if request.diverse else None
    labels: Callable[[Hit], tuple[str, ...]] = lambda _hit: (IMAGE,)  # noqa: E731
    search: Callable[[int], list[Hit]]
    try:
        if request.kind == "similar":
            assert request.product_id is not None
            positives = store.product_vectors(request.product_id)
            if not positives:
                raise QueryRejected("unknown_product", f"no indexed product {request.product_id!r}")
            narrowing = replace(narrowing, exclude_product=request.product_id)

            def search(limit: int) -> list[Hit]:
                return store.recommend(positives, limit, narrowing, score_threshold=threshold)

        elif request.kind == "text" and request.mode != "semantic":
            assert request.text is not None
            words = query_vector(request.text)
            if request.mode == "keyword":
                labels = lambda _hit: (KEYWORD,)  # noqa: E731

                def search(limit: int) -> list[Hit]:
                    return store.query_keywords(words, limit, narrowing, score_threshold=threshold)

            else:
                assert vector is not None
                labels = lambda hit: (TEXT, KEYWORD) if shares_a_word(words, hit.payload) else (TEXT,)  # noqa: E731

                def search(limit: int) -> list[Hit]:
                    return store.query_hybrid(
                        vector,
                        words,
                        limit,
                        narrowing,
                        candidates=max(limit, HYBRID_CANDIDATES),
                        score_threshold=threshold,
                    )

        else:
            assert vector is not None
            if request.kind == "text":
                labels = lambda _hit: (TEXT,)  # noqa: E731

            def search(limit: int) -> list[Hit]:
                return store.query_dense(vector, limit, narrowing, score_threshold=threshold, diversity=diversity)

        products = paged_products(search, k=request.k, offset=request.offset)
        facets = store.facet_categories(narrowing) if request.facets else None
    except NeedsReindex as exc:
        raise QueryRejected("needs_reindex", str(exc)) from exc
    return SearchResponse(results=tuple(to_result(hit, labels(hit)) for hit in products), facets=facets)


def run_search(
    request: SearchRequest,
    *,
    embedder: Callable[[], Embedder],
    store: VectorStore,
    preparer: QueryPreparer,
    settings: Settings,
) -> SearchResponse:
    """Every step in one process (`lookalike search` with no worker running, and the benchmarks)."""
    request = preparer.prepare(request.validate(max_image_bytes=settings.query_max_bytes))
    vector = encode_request(request, embedder=embedder, settings=settings)
    return search_request(request, vector, store=store)


__all__ = ["best_per_product", "encode_request", "paged_products", "run_search", "search_request"]
