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
from lookalike.state import categories as category_paths
from lookalike.state.errors import ModelUnavailable, NeedsReindex, Rejected
from lookalike.state.search import IMAGE, KEYWORD, TEXT, QueryRejected, SearchHit, SearchRequest, SearchResponse
from lookalike.worker import relevance
from lookalike.worker.decode import decode_transport
from lookalike.worker.embed import Embedder
from lookalike.worker.keywords import document_vector, query_vector
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


def to_result(hit: Hit, matched: tuple[str, ...], match: float = 0.0) -> SearchHit:
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
        match=match,
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
# Facets count the query's matches: the products it finds at all (a match above 0, see worker/relevance.py),
# under every filter but the category one (so the category control shows where else to look). For a photo,
# "more like this" or CLIP text: the products whose cosine is above the signal's floor, the first
# FACET_CANDIDATES of the ranking at most; for keywords, every product holding one of the words (up to
# MAX_CANDIDATES points); for hybrid, both sets.
FACET_CANDIDATES = 200


class KeywordFallback(Exception):
    """A word query's text model cannot load: the query runs in keyword mode instead, and says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.note = f"searched by keywords only: the text model is unavailable ({reason})"


def as_keyword_query(request: SearchRequest) -> SearchRequest:
    return replace(request, mode="keyword")


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
    :class:`QueryRejected`; words whose text model cannot load raise :class:`KeywordFallback`."""
    if not request.needs_vector:
        return None
    if request.kind == "text":
        assert request.text is not None
        try:
            if text_embedder is None:
                from lookalike.worker.text import TextEmbedder

                model = TextEmbedder.for_settings(settings)
            else:
                model = text_embedder()
        except ModelUnavailable as exc:
            raise KeywordFallback(exc.detail or str(exc)) from exc
        return model.embed([request.text])[0]
    if not request.prepared or request.image is None:
        raise QueryRejected(
            "not_prepared", "a query's image is reduced to the model's input before it is sent (QueryPreparer)"
        )
    try:
        prepared = decode_transport(request.image)
    except Rejected as exc:
        raise QueryRejected(exc.reason, exc.detail) from exc
    return embedder().embed([prepared])[0]


Search = Callable[[int], list[Hit]]


def _searcher(
    request: SearchRequest, vector: np.ndarray | None, store: VectorStore, narrowing: Narrowing, *, diverse: bool
) -> Search:
    """The ranked point search the request asks for, under ``narrowing``: ``search(limit)`` -> hits."""
    threshold = request.filters.min_score
    if request.kind == "similar":
        assert request.product_id is not None
        positives = store.product_vectors(request.product_id)
        if not positives:
            raise QueryRejected("unknown_product", f"no indexed product {request.product_id!r}")
        narrowing = replace(narrowing, exclude_product=request.product_id)
        return lambda limit: store.recommend(positives, limit, narrowing, score_threshold=threshold)
    if request.kind == "text" and request.mode != "semantic":
        assert request.text is not None
        words = query_vector(request.text)
        if request.mode == "keyword":
            return lambda limit: store.query_keywords(words, limit, narrowing, score_threshold=threshold)
        assert vector is not None
        return lambda limit: store.query_hybrid(
            vector, words, limit, narrowing, candidates=max(limit, HYBRID_CANDIDATES), score_threshold=threshold
        )
    assert vector is not None
    diversity = DIVERSITY if diverse else None
    return lambda limit: store.query_dense(vector, limit, narrowing, score_threshold=threshold, diversity=diversity)


def _product(hit: Hit) -> str:
    return str(hit.payload.get("product_id"))


def _rated(request: SearchRequest, vector: np.ndarray | None, vectors: list[list[float]], hit: Hit) -> SearchHit:
    """The hit as a result: which signals found it, and its match value (``worker/relevance.py``); ``vectors``
    are its product's (hybrid words only)."""
    if request.kind != "text":
        return to_result(hit, (IMAGE,), relevance.image_match(hit.score))
    if request.mode == "semantic":
        return to_result(hit, (TEXT,), relevance.text_match(hit.score))
    assert request.text is not None
    words = query_vector(request.text)[0]
    keyword = relevance.keyword_match(words, document_vector(hit.payload)[0])
    if request.mode == "keyword":
        return to_result(hit, (KEYWORD,), keyword)
    assert vector is not None
    text = relevance.text_match(relevance.best_cosine(vector, vectors))
    return to_result(hit, (TEXT, KEYWORD) if keyword > 0 else (TEXT,), max(text, keyword))


def _matches(request: SearchRequest, vector: np.ndarray | None, store: VectorStore, narrowing: Narrowing) -> list[Hit]:
    """The products the query finds at all, one hit each, for its facets (see FACET_CANDIDATES)."""
    if request.kind == "text" and request.mode == "keyword":
        return paged_products(_searcher(request, vector, store, narrowing, diverse=False), k=MAX_CANDIDATES, offset=0)
    if request.kind == "text" and request.mode == "hybrid":
        words = _matches(replace(request, mode="keyword"), None, store, narrowing)
        meaning = _matches(replace(request, mode="semantic"), vector, store, narrowing)
        return best_per_product(words + meaning)
    floor = relevance.TEXT_FLOOR if request.kind == "text" else relevance.IMAGE_FLOOR
    threshold = max(floor, request.filters.min_score if request.filters.min_score is not None else floor)
    above = replace(request, filters=replace(request.filters, min_score=threshold))
    return paged_products(_searcher(above, vector, store, narrowing, diverse=False), k=FACET_CANDIDATES, offset=0)


def search_request(request: SearchRequest, vector: np.ndarray | None, *, store: VectorStore) -> SearchResponse:
    """Search the store for a validated request, with its vector already computed (``encode_request``):
    no download, no model. One entry per product, its best image, best first; pages by ``offset``."""
    if request.needs_vector and vector is None:
        raise QueryRejected("not_encoded", "this query needs its vector computed first (the lookalike.encode task)")
    filters = request.filters
    narrowing = Narrowing(category=filters.category, min_price=filters.min_price, max_price=filters.max_price)
    try:
        search = _searcher(request, vector, store, narrowing, diverse=request.diverse)
        products = paged_products(search, k=request.k, offset=request.offset)
        # Hybrid words rate each product by its best image against the words: its vectors, all read at once.
        rating_hybrid = request.kind == "text" and request.mode == "hybrid"
        vectors = store.products_vectors([_product(hit) for hit in products]) if rating_hybrid else {}
        results = tuple(_rated(request, vector, vectors.get(_product(hit), []), hit) for hit in products)
        facets = None
        if request.facets:
            matches = _matches(request, vector, store, replace(narrowing, category=None))
            facets = category_paths.facet_tree(hit.payload.get("category") for hit in matches)
    except NeedsReindex as exc:
        raise QueryRejected("needs_reindex", str(exc)) from exc
    return SearchResponse(results=results, facets=facets, mode=request.mode if request.kind == "text" else None)


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
    try:
        vector = encode_request(request, embedder=embedder, settings=settings)
    except KeywordFallback as fallback:
        return replace(search_request(as_keyword_query(request), None, store=store), note=fallback.note)
    return search_request(request, vector, store=store)


__all__ = [
    "KeywordFallback",
    "as_keyword_query",
    "best_per_product",
    "encode_request",
    "paged_products",
    "run_search",
    "search_request",
]
