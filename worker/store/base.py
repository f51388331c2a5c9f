"""The store's contract and the logic both engines share.

:class:`VectorStore` is what lookalike needs of a vector store. Its public methods are written here once,
engine-neutral: which filter a :class:`Narrowing` means, what a missing collection or the legacy layout
answers, how a point's vectors are laid out, how a hybrid query is composed, which payload indexes exist, how
scrolling pages. They speak to the engine through a few primitives (the ``_``-prefixed abstract methods),
which take engine-neutral values (:class:`Where`, the query shapes below, ``Selector``) and translate them into
one engine's API, nothing more. An engine is a small subclass: :mod:`.edge` and :mod:`.client`.

To add a filter, extend :class:`Narrowing` and :meth:`Narrowing.where` (and an index in ``PAYLOAD_INDEXES``);
to add a query shape, add a dataclass beside :class:`Nearest` and teach each engine's ``_query`` it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# The store's outage and refusal types live with every other error (state/errors.py); the engines raise them
# through this module.
from lookalike.state import categories as category_paths
from lookalike.state.errors import NeedsReindex, StoreError
from lookalike.state.errors import StoreLocked as StoreLocked
from lookalike.state.errors import StoreUnavailable as StoreUnavailable

SCROLL_PAGE = 1000
# The current layout: a named dense vector and a named sparse (BM25, IDF) vector per point. Collections made
# before it hold one unnamed dense vector (the "legacy" layout): they answer image queries as before, and
# `lookalike reindex` copies them into the current layout.
DENSE = "image"
SPARSE = "keywords"
NAMED, LEGACY = "named", "legacy"
RRF_K = 60
# Payload indexes every collection gets: the keys filters read (see Narrowing.where).
IndexKind = Literal["keyword", "float", "integer"]
PAYLOAD_INDEXES: dict[str, IndexKind] = {
    "product_id": "keyword",
    "category": "keyword",
    "categories": "keyword",
    "category_keys": "keyword",
    "price_value": "float",
    "primary": "integer",
}


Sparse = tuple[list[int], list[float]]


@dataclass(frozen=True)
class PointRecord:
    id: str
    vector: Sequence[float] | np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)
    keywords: Sparse | None = None  # BM25 of the product's text (the current layout)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


# ------------------------------------------------------------------------------------------ filters
@dataclass(frozen=True)
class Match:
    """``key`` equals ``value`` (for a list-valued key: one of its elements does)."""

    key: str
    value: str | int


@dataclass(frozen=True)
class MatchAny:
    """``key`` equals one of ``values``."""

    key: str
    values: tuple[str | int, ...]


@dataclass(frozen=True)
class Range:
    key: str
    gte: float | None = None
    lte: float | None = None


Condition = Match | MatchAny | Range


@dataclass(frozen=True)
class Where:
    """A filter as every engine can say it: all of ``must`` and none of ``must_not``."""

    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()


def of_product(product_id: str) -> Where:
    """The points of one product."""
    return Where(must=(Match("product_id", product_id),))


def of_products(product_ids: Sequence[str]) -> Where:
    """The points of any of these products."""
    return Where(must=(MatchAny("product_id", tuple(product_ids)),))


@dataclass(frozen=True)
class Narrowing:
    """Filters as the engines apply them: a category as people type it (any level, or a path from the top, in any
    case: matched on the point's normalized ``category_keys``, see ``state/categories.py``), a price range on
    the parsed price, products left out, and one point per product (its first image: ``primary``)."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    exclude_product: str | None = None
    primary_only: bool = False

    @property
    def empty(self) -> bool:
        return self == Narrowing()

    @property
    def where(self) -> Where | None:
        if self.empty:
            return None
        must: list[Condition] = []
        if self.category:
            must.append(Match("category_keys", category_paths.normalize(self.category)))
        if self.min_price is not None or self.max_price is not None:
            must.append(Range("price_value", gte=self.min_price, lte=self.max_price))
        if self.primary_only:
            must.append(Match("primary", 1))
        must_not = (Match("product_id", self.exclude_product),) if self.exclude_product else ()
        return Where(must=tuple(must), must_not=must_not)


# ------------------------------------------------------------------------------------------ query shapes
@dataclass(frozen=True)
class Nearest:
    """Nearest points to a dense vector; ``using`` names the vector (None: the legacy layout's unnamed one)."""

    vector: list[float]
    using: str | None


@dataclass(frozen=True)
class NearestKeywords:
    """Points by the dot product of their sparse keyword vector (BM25 with IDF) with ``keywords``."""

    keywords: Sparse


@dataclass(frozen=True)
class Diverse:
    """Maximal marginal relevance over the ``candidates`` nearest: ``diversity`` 0 is plain nearest, 1 most
    diverse."""

    vector: list[float]
    using: str | None
    diversity: float
    candidates: int


@dataclass(frozen=True)
class BestScore:
    """Recommendation: each point scored by its best similarity to one of ``positives``."""

    positives: list[list[float]]
    using: str | None


@dataclass(frozen=True)
class Prefetch:
    query: Nearest | NearestKeywords
    limit: int
    where: Where | None
    score_threshold: float | None = None


@dataclass(frozen=True)
class Fused:
    """Reciprocal rank fusion (k = ``RRF_K``) of the prefetches' rankings."""

    prefetches: tuple[Prefetch, ...]


Scored = Nearest | NearestKeywords | Diverse | BestScore  # one ranking (Fused combines them)
Query = Scored | Fused
# What an update applies to: these point ids, or the points a filter matches.
Selector = list[str] | Where
# A point's vectors as the base lays them out: one dense list (legacy), or the named vectors (the sparse one
# as a Sparse pair; each engine converts it to its own sparse type).
Vectors = list[float] | dict[str, Any]
ScrollRow = tuple[str, dict[str, Any], Any]


# Reciprocal rank fusion scores from ranks alone, so ties are common (a point 3rd on one side only scores what
# another 3rd on the other side only does), and which tied point an engine puts first depends on its segments:
# the same query could answer differently before and after an optimize. A few more than asked for are fetched
# and ties broken by point id, so a fused answer depends only on the data.
FUSION_TIES = 4


def best_first(hits: list[Hit], limit: int) -> list[Hit]:
    """Highest score first, ties by point id; the first ``limit``."""
    return sorted(hits, key=lambda hit: (-hit.score, hit.id))[:limit]


def dense(vector: Sequence[float] | np.ndarray) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()


def present(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without its top-level None values."""
    return {key: value for key, value in payload.items() if value is not None}


def absent(payload: dict[str, Any]) -> list[str]:
    return [key for key, value in payload.items() if value is None]


def needs_reindex(collection: str) -> StoreError:
    return NeedsReindex(
        f"collection {collection!r} was built before keyword search: run `lookalike reindex` to upgrade it "
        "(no download, no embedding)"
    )


def hits(points: Any) -> list[Hit]:
    """An engine's scored points (both engines' have ``id``, ``score`` and ``payload``) as hits."""
    return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


class VectorStore(ABC):
    """What lookalike needs of a vector store; every method is safe to repeat (idempotent).

    One collection of cosine vectors whose payload is the product's fields plus ``image_url``. A payload key
    whose value is None is not stored (upserts leave it out, payload updates delete it), so "missing" is the
    one way to say "no value". A collection that does not exist yet reads as empty: queries find nothing,
    updates and deletes do nothing."""

    collection: str
    _layout: str | None = None

    # -- collection -----------------------------------------------------------------------------------
    def ensure_collection(self, dim: int) -> None:
        """Create the collection (cosine, ``dim``) and its payload indexes if missing; check ``dim`` if not."""
        if not self._exists():
            self._create(dim)
        size = self._dense_size()
        if size is not None and size != dim:
            raise StoreError(
                f"collection {self.collection!r} holds {size}-d vectors but the model gives {dim}-d;"
                " use another LOOKALIKE_COLLECTION"
            )
        indexed = self._indexed()
        for name, kind in PAYLOAD_INDEXES.items():
            if name not in indexed:
                self._create_index(name, kind)

    @property
    def layout(self) -> str | None:
        """NAMED, LEGACY, or None when the collection does not exist yet (read once: a layout never changes)."""
        if self._layout is None and self._exists():
            self._layout = self._read_layout()
        return self._layout

    def _using(self) -> str | None:
        return DENSE if self.layout == NAMED else None

    def _require_named(self) -> None:
        if self.layout != NAMED:
            raise needs_reindex(self.collection)

    def optimize(self) -> None:  # noqa: B027 - a no-op is right for engines that optimize by themselves
        """Build the search index over what was added (a server does this by itself)."""

    # -- writes ---------------------------------------------------------------------------------------
    def upsert(self, points: Sequence[PointRecord]) -> None:
        """Insert or replace points, in one request."""
        if not points:
            return
        named = self.layout == NAMED
        self._upsert([(p.id, self._vectors(p, named), present(p.payload)) for p in points])

    @staticmethod
    def _vectors(point: PointRecord, named: bool) -> Vectors:
        if not named:
            return dense(point.vector)
        vectors: dict[str, Any] = {DENSE: dense(point.vector)}
        if point.keywords is not None:
            vectors[SPARSE] = point.keywords
        return vectors

    def _native(self, vectors: Vectors) -> Any:
        """``vectors`` with its sparse vector in the engine's type."""
        if isinstance(vectors, dict):
            return {name: self._sparse(v) if name == SPARSE else v for name, v in vectors.items()}
        return vectors

    def set_product_payload(self, product_id: str, payload: dict[str, Any]) -> None:
        """Overwrite the given payload keys on every point of one product (other keys stay)."""
        if not self._exists():
            return
        where = of_product(product_id)
        if present(payload):
            self._set_payload(where, present(payload))
        if absent(payload):
            self._delete_payload(where, absent(payload))

    def set_point_payload(self, point_ids: Sequence[str], payload: dict[str, Any]) -> None:
        if point_ids and self._exists():
            self._set_payload(list(point_ids), present(payload))

    def set_keywords(self, point_ids: Sequence[str], keywords: Sparse) -> None:
        """Replace the keyword vector of these points in place (a product's name or description changed)."""
        if point_ids and self._exists() and self.layout == NAMED:
            self._set_vectors(list(point_ids), {SPARSE: keywords})

    def delete_ids(self, ids: Sequence[str]) -> None:
        if ids and self._exists():
            self._delete(list(ids))

    def delete_product(self, product_id: str) -> None:
        """Every point of the product, in one filtered delete."""
        if self._exists():
            self._delete(of_product(product_id))

    # -- reads ----------------------------------------------------------------------------------------
    def scroll(
        self, product_id: str | None = None, with_vectors: bool = False
    ) -> Iterator[tuple[str, dict[str, Any], list[float] | None]]:
        """Every point (of one product), as (id, payload, dense vector or None), a page at a time."""
        yield from self._scroll(of_product(product_id) if product_id else None, with_vectors)

    def _scroll(
        self, where: Where | None, with_vectors: bool
    ) -> Iterator[tuple[str, dict[str, Any], list[float] | None]]:
        if not self._exists():
            return
        offset = None
        while True:
            rows, offset = self._scroll_page(where, offset, with_vectors)
            for point_id, payload, vector in rows:
                if isinstance(vector, dict):
                    vector = vector.get(DENSE, vector.get(""))
                yield point_id, payload, (list(vector) if vector is not None and with_vectors else None)
            if offset is None:
                return

    def scroll_page(
        self, offset: str | None, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any], list[float] | None]], str | None]:
        """One page of points in id order, with their dense vectors, from ``offset`` (None: the first); and the
        offset of the next page as text (None after the last). A paged reader can stop, save the offset, and
        resume from it in another process (`lookalike duplicates scan`)."""
        if not self._exists():
            return [], None
        rows, following = self._scroll_page(None, offset, True, limit=limit)
        page = []
        for point_id, payload, vector in rows:
            if isinstance(vector, dict):
                vector = vector.get(DENSE, vector.get(""))
            page.append((point_id, payload, list(vector) if vector is not None else None))
        return page, None if following is None else str(following)

    def count(self, product_id: str | None = None) -> int:
        return self._count(of_product(product_id) if product_id else None) if self._exists() else 0

    def product_vectors(self, product_id: str) -> list[list[float]]:
        """The dense vectors of the product's points (empty when it has none)."""
        return [vector for _id, _payload, vector in self.scroll(product_id=product_id, with_vectors=True) if vector]

    def products_vectors(self, product_ids: Sequence[str]) -> dict[str, list[list[float]]]:
        """The dense vectors of each product's points, read in one filtered pass instead of one per product (a
        page of word results rates each product by its best image); a product with none is absent."""
        found: dict[str, list[list[float]]] = {}
        if not product_ids:
            return found
        for _id, payload, vector in self._scroll(of_products(sorted(set(product_ids))), True):
            if vector:
                found.setdefault(str(payload.get("product_id")), []).append(vector)
        return found

    # -- queries --------------------------------------------------------------------------------------
    def query_dense(
        self,
        vector: Sequence[float],
        limit: int,
        narrowing: Narrowing,
        *,
        score_threshold: float | None = None,
        diversity: float | None = None,
    ) -> list[Hit]:
        """Nearest points by cosine; ``diversity`` (0-1) re-ranks with MMR."""
        if not self._exists():
            return []
        query: Query = (
            Diverse(dense(vector), self._using(), diversity, max(limit * 4, 100))
            if diversity
            else Nearest(dense(vector), self._using())
        )
        return self._query(query, limit, narrowing.where, score_threshold)

    def query_keywords(
        self, keywords: Sparse, limit: int, narrowing: Narrowing, *, score_threshold: float | None = None
    ) -> list[Hit]:
        """Points by BM25 score of their product's text."""
        if not self._exists():
            return []
        self._require_named()
        if not keywords[0]:
            return []
        return self._query(NearestKeywords(keywords), limit, narrowing.where, score_threshold)

    def query_hybrid(
        self,
        vector: Sequence[float],
        keywords: Sparse,
        limit: int,
        narrowing: Narrowing,
        *,
        candidates: int,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """A dense prefetch and a keyword prefetch (``candidates`` each), fused by reciprocal rank fusion. The
        score threshold applies to the dense side (keyword scores have no fixed scale)."""
        if not self._exists():
            return []
        self._require_named()
        where = narrowing.where
        prefetches = [Prefetch(Nearest(dense(vector), DENSE), candidates, where, score_threshold)]
        if keywords[0]:
            prefetches.append(Prefetch(NearestKeywords(keywords), candidates, where))
        return best_first(self._query(Fused(tuple(prefetches)), limit + FUSION_TIES, None, None), limit)

    def recommend(
        self,
        positives: Sequence[Sequence[float]],
        limit: int,
        narrowing: Narrowing,
        *,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """More like these vectors (a product's own images), best first."""
        if not positives or not self._exists():
            return []
        query = BestScore([dense(v) for v in positives], self._using())
        return self._query(query, limit, narrowing.where, score_threshold)

    def query_dense_batch(
        self, vectors: Sequence[Sequence[float]], limit: int, narrowings: Sequence[Narrowing], *, score_threshold: float
    ) -> list[list[Hit]]:
        """One nearest-points query per vector (each with its own narrowing), sent as one batch; one hit list per
        vector, in order. The duplicate check's lookup: a batch of fresh points against the whole store."""
        if not vectors:
            return []
        if not self._exists():
            return [[] for _ in vectors]
        queries = [Nearest(dense(vector), self._using()) for vector in vectors]
        return self._query_batch(queries, limit, [narrowing.where for narrowing in narrowings], score_threshold)

    @abstractmethod
    def close(self) -> None: ...

    # -- the engine's primitives ----------------------------------------------------------------------
    @abstractmethod
    def _exists(self) -> bool:
        """Whether the collection exists (an engine may remember a yes: collections are not dropped)."""

    @abstractmethod
    def _create(self, dim: int) -> None:
        """Create the collection in the current layout (tolerating another process creating it first)."""

    @abstractmethod
    def _read_layout(self) -> str | None:
        """NAMED or LEGACY, from the existing collection's vector configuration."""

    @abstractmethod
    def _dense_size(self) -> int | None:
        """The dense vector size of the existing collection (None when unknown)."""

    @abstractmethod
    def _indexed(self) -> set[str]:
        """The payload keys that have an index."""

    @abstractmethod
    def _create_index(self, key: str, kind: IndexKind) -> None: ...

    @abstractmethod
    def _sparse(self, keywords: Sparse) -> Any:
        """A keyword vector in the engine's sparse vector type."""

    @abstractmethod
    def _upsert(self, points: list[tuple[str, Vectors, dict[str, Any]]]) -> None:
        """Write (id, vectors, payload) points in one request."""

    @abstractmethod
    def _set_vectors(self, ids: list[str], vectors: dict[str, Any]) -> None:
        """Replace the named vectors given (others stay) on these points."""

    @abstractmethod
    def _set_payload(self, selector: Selector, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    def _delete_payload(self, where: Where, keys: list[str]) -> None: ...

    @abstractmethod
    def _delete(self, selector: Selector) -> None: ...

    @abstractmethod
    def _scroll_page(
        self, where: Where | None, offset: Any, with_vectors: bool, *, limit: int = SCROLL_PAGE
    ) -> tuple[list[ScrollRow], Any]:
        """One page (``limit`` points) from ``offset`` (None: the start; a point id, as the engine gave it or as
        text), and the next offset (None: the last page)."""

    @abstractmethod
    def _count(self, where: Where | None) -> int:
        """The exact number of points ``where`` admits."""

    @abstractmethod
    def _query(self, query: Query, limit: int, where: Where | None, score_threshold: float | None) -> list[Hit]:
        """The best ``limit`` points for one query shape, with payloads, best first."""

    @abstractmethod
    def _query_batch(
        self, queries: list[Nearest], limit: int, wheres: list[Where | None], score_threshold: float
    ) -> list[list[Hit]]:
        """The best ``limit`` points for each query (with its own filter), as one batched request."""

