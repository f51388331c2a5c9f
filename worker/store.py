"""Index stage: the vector store, behind one small contract with two engines.

* :class:`EdgeStore` - the embedded default: ``qdrant-edge-py``, Qdrant's own engine (HNSW, WAL, payload
  indexes) running in-process on a directory. One process may open a directory at a time.
* :class:`ClientStore` - ``qdrant-client`` against a Qdrant server (``LOOKALIKE_QDRANT_URL``), which takes
  any number of workers; the same class runs qdrant-client's local mode on a path, which speaks the server's
  API and is how the tests cover the server code path without a server.

Both keep one collection of cosine vectors whose payload is the product's fields plus ``image_url``, with
payload indexes on ``product_id``, ``category`` and ``categories``. A payload key whose value is None is not
stored (upserts leave it out, payload updates delete it), so "missing" is the one way to say "no value".
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.config.settings import Settings

log = logging.getLogger(__name__)

INDEXED_FIELDS = ("product_id", "category", "categories")
SCROLL_PAGE = 1000
# The current layout: a named dense vector and a named sparse (BM25, IDF) vector per point. Collections made
# before it hold one unnamed dense vector (the "legacy" layout): they answer image queries as before, and
# `lookalike reindex` copies them into the current layout.
DENSE = "image"
SPARSE = "keywords"
NAMED, LEGACY = "named", "legacy"
RRF_K = 60


class StoreError(RuntimeError):
    """The store refused an operation for a reason retrying will not fix."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retry later."""


class StoreLocked(StoreUnavailable):
    """The embedded store's directory is open in another process. Retried like an unreachable store: a store
    owner being restarted holds it for a moment; a batch that finds it so waits rather than fails."""


Sparse = tuple[list[int], list[float]]


@dataclass(frozen=True)
class PointRecord:
    id: str
    vector: Sequence[float] | np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)
    keywords: Sparse | None = None  # BM25 of the product's text (the current layout)


@dataclass(frozen=True)
class Narrowing:
    """Filters as the engines apply them: a category at any level of its path (one level, not the whole path), a price
    range on the parsed price, products left out, and (for facets) one point per product."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    exclude_product: str | None = None
    primary_only: bool = False

    @property
    def empty(self) -> bool:
        return self == Narrowing()


def needs_reindex(collection: str) -> StoreError:
    return StoreError(
        f"collection {collection!r} was built before keyword search: run `lookalike reindex` to upgrade it "
        "(no download, no embedding)"
    )


def present(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without its top-level None values."""
    return {key: value for key, value in payload.items() if value is not None}


def absent(payload: dict[str, Any]) -> list[str]:
    return [key for key, value in payload.items() if value is None]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(ABC):
    """What lookalike needs of a vector store; every method is safe to repeat (idempotent)."""

    collection: str

    @abstractmethod
    def ensure_collection(self, dim: int) -> None:
        """Create the collection (cosine, ``dim``) and its payload indexes if missing; check ``dim`` if not."""

    @abstractmethod
    def upsert(self, points: Sequence[PointRecord]) -> None:
        """Insert or replace points, in one request."""

    @abstractmethod
    def search(self, vector: Sequence[float], limit: int, category: str | None = None) -> list[Hit]:
        """Nearest points by cosine similarity, best first; ``category`` matches any level of the path."""

    @abstractmethod
    def set_product_payload(self, product_id: str, payload: dict[str, Any]) -> None:
        """Overwrite the given payload keys on every point of one product (other keys stay)."""

    @abstractmethod
    def delete_ids(self, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def delete_product(self, product_id: str) -> None:
        """Every point of the product, in one filtered delete."""

    @abstractmethod
    def scroll(
        self, product_id: str | None = None, with_vectors: bool = False
    ) -> Iterator[tuple[str, dict[str, Any], list[float] | None]]:
        """Every point (of one product), as (id, payload, vector or None)."""

    @abstractmethod
    def retrieve(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payloads of the given ids that exist."""

    @abstractmethod
    def count(self, product_id: str | None = None) -> int: ...

    def optimize(self) -> None:  # noqa: B027 - a no-op is right for engines that optimize by themselves
        """Build the search index over what was added (a server does this by itself)."""

    @abstractmethod
    def close(self) -> None: ...

    # -- the current layout's queries (see DENSE, SPARSE) -------------------------------------------------
    @property
    @abstractmethod
    def layout(self) -> str | None:
        """NAMED, LEGACY, or None when the collection does not exist yet."""

    @abstractmethod
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

    @abstractmethod
    def query_dense_batch(
        self, vectors: Sequence[Sequence[float]], limit: int, narrowings: Sequence[Narrowing], *, score_threshold: float
    ) -> list[list[Hit]]:
        """One nearest-points query per vector (each with its own narrowing), sent as one batch; one hit list
        per vector, in order. The duplicate check's lookup: a batch of fresh points against the whole store."""

    @abstractmethod
    def scroll_page(
        self, offset: str | None, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any], list[float] | None]], str | None]:
        """One page of points in id order, with vectors, from ``offset`` (None: the first); and the offset of the
        next page (None after the last). A paged reader can stop and resume from a saved offset."""

    @abstractmethod
    def query_keywords(
        self, keywords: Sparse, limit: int, narrowing: Narrowing, *, score_threshold: float | None = None
    ) -> list[Hit]:
        """Points by BM25 score of their product's text."""

    @abstractmethod
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
        """A dense prefetch and a keyword prefetch (``candidates`` each), fused by reciprocal rank fusion."""

    @abstractmethod
    def recommend(
        self,
        positives: Sequence[Sequence[float]],
        limit: int,
        narrowing: Narrowing,
        *,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """More like these vectors (a product's own images), best first."""

    @abstractmethod
    def product_vectors(self, product_id: str) -> list[list[float]]:
        """The dense vectors of the product's points (empty when it has none)."""

    @abstractmethod
    def facet_categories(self, narrowing: Narrowing, limit: int = 50) -> dict[str, int]:
        """Products per category level among those the narrowing admits (one point per product counted)."""

    @abstractmethod
    def set_keywords(self, point_ids: Sequence[str], keywords: Sparse) -> None:
        """Replace the keyword vector of these points in place (a product's name or description changed)."""

    @abstractmethod
    def set_point_payload(self, point_ids: Sequence[str], payload: dict[str, Any]) -> None: ...

    def product_ids(self) -> set[str]:
        return {str(payload.get("product_id")) for _id, payload, _vector in self.scroll()}


# --------------------------------------------------------------------------------------------- edge engine
class EdgeStore(VectorStore):
    def __init__(self, root: Path, collection: str, *, lock_wait: float = 5.0) -> None:
        self.collection = collection
        self.path = Path(root) / collection
        self.lock_wait = lock_wait
        self._shard: Any = None
        self._layout: str | None = None
        if (self.path / "edge_config.json").exists() or (self.path / "wal").exists():
            self._open()

    def _open(self, config: Any = None) -> None:
        import time

        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                self._open_once(config)
                return
            except StoreLocked:
                # Briefly locked (the previous owner is still closing it): wait a little before giving up.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _open_once(self, config: Any = None) -> None:
        from qdrant_edge import EdgeShard

        try:
            if config is None:
                self._shard = EdgeShard.load(str(self.path))
            else:
                self._shard = EdgeShard.create(str(self.path), config)
        except Exception as exc:
            if "WouldBlock" in str(exc) or "lock" in str(exc).lower():
                raise StoreLocked(
                    f"the embedded store {self.path} is open in another process (a running `lookalike worker`?);"
                    " send work through the broker, or point LOOKALIKE_QDRANT_URL at a Qdrant server"
                ) from exc
            raise StoreError(f"cannot open the embedded store {self.path}: {exc}") from exc

    @property
    def shard(self) -> Any:
        if self._shard is None:
            raise StoreError(f"collection {self.collection!r} does not exist yet at {self.path}")
        return self._shard

    def ensure_collection(self, dim: int) -> None:
        from qdrant_edge import (
            Distance,
            EdgeConfig,
            EdgeVectorParams,
            PayloadSchemaType,
            UpdateOperation,
        )

        if self._shard is None:
            from qdrant_edge import EdgeSparseVectorParams, Modifier

            self.path.mkdir(parents=True, exist_ok=True)
            self._open(
                EdgeConfig(
                    vectors={DENSE: EdgeVectorParams(size=dim, distance=Distance.Cosine)},
                    sparse_vectors={SPARSE: EdgeSparseVectorParams(modifier=Modifier.Idf)},
                )
            )
        vectors = self.shard.info()
        existing = self._vector_size()
        if existing is not None and existing != dim:
            raise StoreError(
                f"collection {self.collection!r} holds {existing}-d vectors but the model gives {dim}-d;"
                " use another LOOKALIKE_COLLECTION"
            )
        schema = vectors.payload_schema
        wanted = {name: PayloadSchemaType.Keyword for name in INDEXED_FIELDS}
        wanted.update({"price_value": PayloadSchemaType.Float, "primary": PayloadSchemaType.Integer})
        for name, kind in wanted.items():
            if name not in schema:
                self.shard.update(UpdateOperation.create_field_index(name, kind))

    @property
    def layout(self) -> str | None:
        """Read from the shard's config once per open shard (a shard's layout never changes)."""
        if self._shard is None:
            return None
        if self._layout is None:
            config_file = self.path / "edge_config.json"
            if not config_file.exists():
                return None
            import json

            vectors = json.loads(config_file.read_text()).get("vectors", {})
            self._layout = NAMED if DENSE in vectors else LEGACY
        return self._layout

    def _using(self) -> str | None:
        return DENSE if self.layout == NAMED else None

    def _filter(self, narrowing: Narrowing) -> Any:
        from qdrant_edge import FieldCondition, Filter, MatchValue, RangeFloat

        if narrowing.empty:
            return None
        must: list[Any] = []
        if narrowing.category:
            must.append(FieldCondition("categories", match=MatchValue(narrowing.category)))
        if narrowing.min_price is not None or narrowing.max_price is not None:
            must.append(
                FieldCondition("price_value", range=RangeFloat(gte=narrowing.min_price, lte=narrowing.max_price))
            )
        if narrowing.primary_only:
            must.append(FieldCondition("primary", match=MatchValue(1)))
        must_not = (
            [FieldCondition("product_id", match=MatchValue(narrowing.exclude_product))]
            if narrowing.exclude_product
            else None
        )
        return Filter(must=must or None, must_not=must_not)  # type: ignore[arg-type]

    def _hits(self, points: Any) -> list[Hit]:
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def query_dense(
        self,
        vector: Sequence[float],
        limit: int,
        narrowing: Narrowing,
        *,
        score_threshold: float | None = None,
        diversity: float | None = None,
    ) -> list[Hit]:
        from qdrant_edge import Mmr, Query, QueryRequest

        if self._shard is None:
            return []
        dense = np.asarray(vector, dtype=np.float32).tolist()
        query = (
            Mmr(dense, 1.0 - diversity, max(limit * 4, 100), using=self._using())
            if diversity
            else Query.Nearest(dense, using=self._using())
        )
        request = QueryRequest(
            limit=limit, query=query, with_payload=True, filter=self._filter(narrowing), score_threshold=score_threshold
        )
        return self._hits(self.shard.query(request))

    def query_dense_batch(
        self, vectors: Sequence[Sequence[float]], limit: int, narrowings: Sequence[Narrowing], *, score_threshold: float
    ) -> list[list[Hit]]:
        from qdrant_edge import Query, QueryBatchRequest, QueryRequest

        if self._shard is None or not vectors:
            return [[] for _ in vectors]
        requests = [
            QueryRequest(
                limit=limit,
                query=Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=self._using()),
                with_payload=True,
                filter=self._filter(narrowing),
                score_threshold=score_threshold,
            )
            for vector, narrowing in zip(vectors, narrowings, strict=True)
        ]
        return [self._hits(points) for points in self.shard.query_batch(QueryBatchRequest(requests))]

    def scroll_page(
        self, offset: str | None, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any], list[float] | None]], str | None]:
        from qdrant_edge import ScrollRequest

        if self._shard is None:
            return [], None
        records, following = self.shard.scroll(
            ScrollRequest(
                offset=uuid.UUID(offset) if offset else None, limit=limit, with_payload=True, with_vector=True
            )
        )
        page = []
        for record in records:
            vector = record.vector
            if isinstance(vector, dict):
                vector = vector.get(DENSE, vector.get(""))
            page.append((str(record.id), dict(record.payload or {}), vector))
        return page, None if following is None else str(following)

    def _sparse(self, keywords: Sparse) -> Any:
        from qdrant_edge import SparseVector

        return SparseVector(list(keywords[0]), [float(v) for v in keywords[1]])

    def query_keywords(
        self, keywords: Sparse, limit: int, narrowing: Narrowing, *, score_threshold: float | None = None
    ) -> list[Hit]:
        from qdrant_edge import Query, QueryRequest

        if self._shard is None:
            return []
        if self.layout != NAMED:
            raise needs_reindex(self.collection)
        if not keywords[0]:
            return []
        request = QueryRequest(
            limit=limit,
            query=Query.Nearest(self._sparse(keywords), using=SPARSE),
            with_payload=True,
            filter=self._filter(narrowing),
            score_threshold=score_threshold,
        )
        return self._hits(self.shard.query(request))

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
        from qdrant_edge import Fusion, Prefetch, Query, QueryRequest

        if self._shard is None:
            return []
        if self.layout != NAMED:
            raise needs_reindex(self.collection)
        flt = self._filter(narrowing)
        prefetches = [
            Prefetch(
                limit=candidates,
                query=Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=DENSE),
                filter=flt,
                score_threshold=score_threshold,
            )
        ]
        if keywords[0]:
            prefetches.append(
                Prefetch(limit=candidates, query=Query.Nearest(self._sparse(keywords), using=SPARSE), filter=flt)
            )
        request = QueryRequest(limit=limit, prefetches=prefetches, query=Fusion.Rrf(RRF_K), with_payload=True)  # type: ignore[arg-type]
        return self._hits(self.shard.query(request))

    def recommend(
        self,
        positives: Sequence[Sequence[float]],
        limit: int,
        narrowing: Narrowing,
        *,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        from qdrant_edge import Query, QueryRequest, RecommendQuery

        if self._shard is None or not positives:
            return []
        query = Query.RecommendBestScore(
            RecommendQuery([np.asarray(v, dtype=np.float32).tolist() for v in positives], []), using=self._using()
        )
        request = QueryRequest(
            limit=limit, query=query, with_payload=True, filter=self._filter(narrowing), score_threshold=score_threshold
        )
        return self._hits(self.shard.query(request))

    def product_vectors(self, product_id: str) -> list[list[float]]:
        return [vector for _id, _payload, vector in self.scroll(product_id=product_id, with_vectors=True) if vector]

    def facet_categories(self, narrowing: Narrowing, limit: int = 50) -> dict[str, int]:
        from dataclasses import replace

        from qdrant_edge import FacetRequest

        if self._shard is None:
            return {}
        if self.layout != NAMED:
            raise needs_reindex(self.collection)
        request = FacetRequest(
            "categories", limit=limit, exact=True, filter=self._filter(replace(narrowing, primary_only=True))
        )
        return {str(hit.value): int(hit.count) for hit in self.shard.facet(request).hits}

    def set_keywords(self, point_ids: Sequence[str], keywords: Sparse) -> None:
        from qdrant_edge import PointVectors, UpdateOperation

        if not point_ids or self._shard is None or self.layout != NAMED:
            return
        vectors = [PointVectors(uuid.UUID(i), {SPARSE: self._sparse(keywords)}) for i in point_ids]
        self.shard.update(UpdateOperation.update_vectors(vectors))

    def set_point_payload(self, point_ids: Sequence[str], payload: dict[str, Any]) -> None:
        from qdrant_edge import UpdateOperation

        if point_ids and self._shard is not None:
            self.shard.update(UpdateOperation.set_payload([uuid.UUID(i) for i in point_ids], present(payload)))

    def _vector_size(self) -> int | None:
        config_file = self.path / "edge_config.json"
        if config_file.exists():
            import json

            try:
                vectors = json.loads(config_file.read_text()).get("vectors", {})
                first = next(iter(vectors.values()), None)
                return int(first["size"]) if first else None
            except (ValueError, KeyError, TypeError):
                return None
        return None

    def upsert(self, points: Sequence[PointRecord]) -> None:
        from qdrant_edge import Point, UpdateOperation

        if not points:
            return
        named = self.layout == NAMED
        batch = []
        for p in points:
            dense = np.asarray(p.vector, dtype=np.float32).tolist()
            vector: Any = dense
            if named:
                vector = {DENSE: dense}
                if p.keywords is not None:
                    vector[SPARSE] = self._sparse(p.keywords)
            batch.append(Point(p.id, vector, present(p.payload)))
        self.shard.update(UpdateOperation.upsert_points(batch))

    @staticmethod
    def _match(key: str, value: str) -> Any:
        from qdrant_edge import FieldCondition, Filter, MatchValue

        return Filter(must=[FieldCondition(key, match=MatchValue(value))])

    def search(self, vector: Sequence[float], limit: int, category: str | None = None) -> list[Hit]:
        return self.query_dense(vector, limit, Narrowing(category=category))

    def set_product_payload(self, product_id: str, payload: dict[str, Any]) -> None:
        from qdrant_edge import UpdateOperation

        if self._shard is None:
            return
        selector = self._match("product_id", product_id)
        if present(payload):
            self.shard.update(UpdateOperation.set_payload_by_filter(selector, present(payload)))
        if absent(payload):
            self.shard.update(UpdateOperation.delete_payload_by_filter(selector, absent(payload)))

    def delete_ids(self, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        if ids and self._shard is not None:
            self.shard.update(UpdateOperation.delete_points([uuid.UUID(i) for i in ids]))

    def delete_product(self, product_id: str) -> None:
        from qdrant_edge import UpdateOperation

        if self._shard is not None:
            self.shard.update(UpdateOperation.delete_points_by_filter(self._match("product_id", product_id)))

    def scroll(
        self, product_id: str | None = None, with_vectors: bool = False
    ) -> Iterator[tuple[str, dict[str, Any], list[float] | None]]:
        from qdrant_edge import ScrollRequest

        if self._shard is None:
            return
        offset = None
        filter_ = self._match("product_id", product_id) if product_id else None
        while True:
            records, offset = self.shard.scroll(
                ScrollRequest(
                    offset=offset, limit=SCROLL_PAGE, filter=filter_, with_payload=True, with_vector=with_vectors
                )
            )
            for record in records:
                vector = record.vector if with_vectors else None
                if isinstance(vector, dict):
                    vector = vector.get(DENSE, vector.get(""))
                yield str(record.id), dict(record.payload or {}), vector
            if offset is None:
                return

    def retrieve(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids or self._shard is None:
            return {}
        records = self.shard.retrieve([uuid.UUID(i) for i in ids], with_payload=True, with_vector=False)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def count(self, product_id: str | None = None) -> int:
        from qdrant_edge import CountRequest

        if self._shard is None:
            return 0
        filter_ = self._match("product_id", product_id) if product_id else None
        return int(self.shard.count(CountRequest(exact=True, filter=filter_)))

    def optimize(self) -> None:
        if self._shard is not None:
            self.shard.optimize()

    def close(self) -> None:
        if self._shard is not None:
            try:
                self.shard.flush()
            finally:
                self._shard.close()
                self._shard = None
                self._layout = None


# ------------------------------------------------------------------------------------------- qdrant-client
class ClientStore(VectorStore):
    """qdrant-client: a Qdrant server by URL, or its local mode on a path (same API)."""

    def __init__(
        self,
        collection: str,
        *,
        url: str | None = None,
        path: Path | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        from qdrant_client import QdrantClient

        self.collection = collection
        self._is_server = url is not None
        try:
            if url is not None:
                self.client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout) or 1)
            else:
                assert path is not None
                self.client = QdrantClient(path=str(path))
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise StoreLocked(f"the local store {path} is open in another process") from exc
            raise
        self._known = False
        self._layout: str | None = None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            return fn(*args, **kwargs)
        except ResponseHandlingException as exc:
            raise StoreUnavailable(f"Qdrant unreachable during {what}: {exc}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code is None or exc.status_code == 429 or exc.status_code >= 500:
                raise StoreUnavailable(f"Qdrant answered {exc.status_code} during {what}") from exc
            raise StoreError(f"Qdrant refused {what}: {exc.status_code} {exc.content[:200]!r}") from exc
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"Qdrant unreachable during {what}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore", "grpc")):
                raise StoreUnavailable(f"Qdrant unreachable during {what}: {exc}") from exc
            raise

    def ensure_collection(self, dim: int) -> None:
        from qdrant_client import models

        if not self._call("collection check", self.client.collection_exists, self.collection):
            try:
                self._call(
                    "create collection",
                    self.client.create_collection,
                    self.collection,
                    vectors_config={DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
                    sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                )
            except (StoreError, ValueError) as exc:
                # Another worker created it between the check and the create.
                if not self._call("collection check", self.client.collection_exists, self.collection):
                    raise StoreError(str(exc)) from exc
        info = self._call("collection info", self.client.get_collection, self.collection)
        params = info.config.params.vectors
        self._layout = NAMED if isinstance(params, dict) else LEGACY
        if isinstance(params, dict):
            params = params.get(DENSE)
        size = getattr(params, "size", None)
        if size is not None and size != dim:
            raise StoreError(
                f"collection {self.collection!r} holds {size}-d vectors but the model gives {dim}-d;"
                " use another LOOKALIKE_COLLECTION"
            )
        existing = set((info.payload_schema or {}).keys())
        wanted = {name: models.PayloadSchemaType.KEYWORD for name in INDEXED_FIELDS}
        wanted.update({"price_value": models.PayloadSchemaType.FLOAT, "primary": models.PayloadSchemaType.INTEGER})
        for name, kind in wanted.items():
            if name not in existing and self._is_server:
                self._call(
                    "create payload index",
                    self.client.create_payload_index,
                    self.collection,
                    field_name=name,
                    field_schema=kind,
                    wait=True,
                )
        self._known = True

    @property
    def layout(self) -> str | None:
        if self._layout is None and self._exists():
            params = self._call("collection info", self.client.get_collection, self.collection).config.params
            self._layout = NAMED if isinstance(params.vectors, dict) else LEGACY
        return self._layout

    def _using(self) -> str | None:
        return DENSE if self.layout == NAMED else None

    def _narrow(self, narrowing: Narrowing) -> Any:
        from qdrant_client import models

        if narrowing.empty:
            return None
        must: list[Any] = []
        if narrowing.category:
            must.append(models.FieldCondition(key="categories", match=models.MatchValue(value=narrowing.category)))
        if narrowing.min_price is not None or narrowing.max_price is not None:
            must.append(
                models.FieldCondition(
                    key="price_value", range=models.Range(gte=narrowing.min_price, lte=narrowing.max_price)
                )
            )
        if narrowing.primary_only:
            must.append(models.FieldCondition(key="primary", match=models.MatchValue(value=1)))
        must_not = (
            [models.FieldCondition(key="product_id", match=models.MatchValue(value=narrowing.exclude_product))]
            if narrowing.exclude_product
            else None
        )
        return models.Filter(must=must or None, must_not=must_not)

    def _query(self, what: str, **kwargs: Any) -> list[Hit]:
        if not self._exists():
            return []
        response = self._call(what, self.client.query_points, self.collection, with_payload=True, **kwargs)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    @staticmethod
    def _sparse(keywords: Sparse) -> Any:
        from qdrant_client import models

        return models.SparseVector(indices=list(keywords[0]), values=[float(v) for v in keywords[1]])

    def query_dense(
        self,
        vector: Sequence[float],
        limit: int,
        narrowing: Narrowing,
        *,
        score_threshold: float | None = None,
        diversity: float | None = None,
    ) -> list[Hit]:
        from qdrant_client import models

        dense = np.asarray(vector, dtype=np.float32).tolist()
        query: Any = (
            models.NearestQuery(
                nearest=dense, mmr=models.Mmr(diversity=diversity, candidates_limit=max(limit * 4, 100))
            )
            if diversity
            else dense
        )
        return self._query(
            "search",
            query=query,
            using=self._using(),
            limit=limit,
            query_filter=self._narrow(narrowing),
            score_threshold=score_threshold,
        )

    def query_dense_batch(
        self, vectors: Sequence[Sequence[float]], limit: int, narrowings: Sequence[Narrowing], *, score_threshold: float
    ) -> list[list[Hit]]:
        from qdrant_client import models

        if not vectors or not self._exists():
            return [[] for _ in vectors]
        requests = [
            models.QueryRequest(
                query=np.asarray(vector, dtype=np.float32).tolist(),
                using=self._using(),
                limit=limit,
                filter=self._narrow(narrowing),
                score_threshold=score_threshold,
                with_payload=True,
            )
            for vector, narrowing in zip(vectors, narrowings, strict=True)
        ]
        responses = self._call("query_batch", self.client.query_batch_points, self.collection, requests=requests)
        return [[Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in responses]

    def scroll_page(
        self, offset: str | None, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any], list[float] | None]], str | None]:
        if not self._exists():
            return [], None
        records, following = self._call(
            "scroll",
            self.client.scroll,
            self.collection,
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=True,
        )
        page = []
        for record in records:
            vector = record.vector
            if isinstance(vector, dict):
                vector = vector.get(DENSE)
            page.append((str(record.id), dict(record.payload or {}), vector))
        return page, None if following is None else str(following)

    def query_keywords(
        self, keywords: Sparse, limit: int, narrowing: Narrowing, *, score_threshold: float | None = None
    ) -> list[Hit]:
        if not self._exists():
            return []
        if self.layout != NAMED:
            raise needs_reindex(self.collection)
        if not keywords[0]:
            return []
        return self._query(
            "keyword search",
            query=self._sparse(keywords),
            using=SPARSE,
            limit=limit,
            query_filter=self._narrow(narrowing),
            score_threshold=score_threshold,
        )

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
        from qdrant_client import models

        if not self._exists():
            return []
        if self.layout != NAMED:
            raise needs_reindex(self.collection)
        flt = self._narrow(narrowing)
        prefetch = [
            models.Prefetch(
                query=np.asarray(vector, dtype=np.float32).tolist(),
                using=DENSE,
                limit=candidates,
                filter=flt,
                score_threshold=score_threshold,
            )
        ]
        if keywords[0]:
            prefetch.append(models.Prefetch(query=self._sparse(keywords), using=SPARSE, limit=candidates, filter=flt))
        return self._query(
            "hybrid search", prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF), limit=limit
        )

    def recommend(
        self,
        positives: Sequence[Sequence[float]],
        limit: int,
        narrowing: Narrowing,
        *,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        from qdrant_client import models

        if not positives:
            return []
        query = models.RecommendQuery(
            recommend=models.RecommendInput(
                positive=[np.asarray(v, dtype=np.float32).tolist() for v in positives],
                strategy=models.RecommendStrategy.BEST_SCORE,
            )
        )
        return self._query(
            "recommend",
            query=query,
            using=self._using(),
            limit=limit,
            query_filter=self._narrow(narrowing),
            score_threshold=score_threshold,
        )

    def product_vectors(self, product_id: str) -> list[list[float]]:
        found = []
        for _id, _payload, vector in self.scroll(product_id=product_id, with_vectors=True):
            if isinstance(vector, dict):
                vector = vector.get(DENSE)
            if vector:
                found.append(list(vector))
        return found

    def facet_categories(self, narrowing: Narrowing, limit: int = 50) -> dict[str, int]:
        from dataclasses import replace

        if not self._exists():
            return {}
        if self.layout != NAMED:
            raise needs_reindex(self.collection)
        response = self._call(
            "facet",
            self.client.facet,
            self.collection,
            key="categories",
            limit=limit,
            exact=True,
            facet_filter=self._narrow(replace(narrowing, primary_only=True)),
        )
        return {str(hit.value): int(hit.count) for hit in response.hits}

    def set_keywords(self, point_ids: Sequence[str], keywords: Sparse) -> None:
        from qdrant_client import models

        if not point_ids or not self._exists() or self.layout != NAMED:
            return
        vectors = [models.PointVectors(id=i, vector={SPARSE: self._sparse(keywords)}) for i in point_ids]
        self._call("update vectors", self.client.update_vectors, self.collection, points=vectors, wait=True)

    def set_point_payload(self, point_ids: Sequence[str], payload: dict[str, Any]) -> None:
        if point_ids and self._exists():
            self._call(
                "set payload",
                self.client.set_payload,
                self.collection,
                payload=present(payload),
                points=list(point_ids),
                wait=True,
            )

    def _filter(self, key: str, value: str) -> Any:
        from qdrant_client import models

        return models.Filter(must=[models.FieldCondition(key=key, match=models.MatchValue(value=value))])

    def _exists(self) -> bool:
        if not self._known:
            self._known = bool(self._call("collection check", self.client.collection_exists, self.collection))
        return self._known

    def upsert(self, points: Sequence[PointRecord]) -> None:
        from qdrant_client import models

        if not points:
            return
        named = self.layout == NAMED
        structs = []
        for p in points:
            dense = np.asarray(p.vector, dtype=np.float32).tolist()
            vector: Any = dense
            if named:
                vector = {DENSE: dense}
                if p.keywords is not None:
                    vector[SPARSE] = self._sparse(p.keywords)
            structs.append(models.PointStruct(id=p.id, vector=vector, payload=present(p.payload)))
        self._call("upsert", self.client.upsert, self.collection, points=structs, wait=True)

    def search(self, vector: Sequence[float], limit: int, category: str | None = None) -> list[Hit]:
        return self.query_dense(vector, limit, Narrowing(category=category))

    def set_product_payload(self, product_id: str, payload: dict[str, Any]) -> None:
        if not self._exists():
            return
        selector = self._filter("product_id", product_id)
        if present(payload):
            self._call(
                "set payload",
                self.client.set_payload,
                self.collection,
                payload=present(payload),
                points=selector,
                wait=True,
            )
        if absent(payload):
            self._call(
                "delete payload",
                self.client.delete_payload,
                self.collection,
                keys=absent(payload),
                points=selector,
                wait=True,
            )

    def delete_ids(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        if ids and self._exists():
            self._call(
                "delete",
                self.client.delete,
                self.collection,
                points_selector=models.PointIdsList(points=list(ids)),
                wait=True,
            )

    def delete_product(self, product_id: str) -> None:
        from qdrant_client import models

        if self._exists():
            self._call(
                "delete",
                self.client.delete,
                self.collection,
                points_selector=models.FilterSelector(filter=self._filter("product_id", product_id)),
                wait=True,
            )

    def scroll(
        self, product_id: str | None = None, with_vectors: bool = False
    ) -> Iterator[tuple[str, dict[str, Any], list[float] | None]]:
        if not self._exists():
            return
        offset = None
        while True:
            records, offset = self._call(
                "scroll",
                self.client.scroll,
                self.collection,
                scroll_filter=self._filter("product_id", product_id) if product_id else None,
                limit=SCROLL_PAGE,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            for record in records:
                vector = record.vector if with_vectors else None
                if isinstance(vector, dict):
                    vector = vector.get(DENSE)
                yield str(record.id), dict(record.payload or {}), vector
            if offset is None:
                return

    def retrieve(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids or not self._exists():
            return {}
        records = self._call("retrieve", self.client.retrieve, self.collection, ids=list(ids), with_payload=True)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def count(self, product_id: str | None = None) -> int:
        if not self._exists():
            return 0
        result = self._call(
            "count",
            self.client.count,
            self.collection,
            count_filter=self._filter("product_id", product_id) if product_id else None,
            exact=True,
        )
        return int(result.count)

    def close(self) -> None:
        self.client.close()


def live_collection(settings: Settings) -> str:
    """The physical collection queries and writes go to: ``LOOKALIKE_COLLECTION`` itself, or the one a
    `lookalike reindex` switched to. Embedded engines keep the pointer in a small file beside the collections
    (replaced atomically); a Qdrant server resolves the collection name as an alias by itself."""
    if settings.qdrant_url:
        return settings.collection
    pointer = settings.qdrant_path / f"{settings.collection}.live"
    try:
        name = pointer.read_text().strip()
    except OSError:
        return settings.collection
    return name or settings.collection


def switch_live(settings: Settings, physical: str) -> None:
    """Point ``LOOKALIKE_COLLECTION`` at ``physical``, all at once: until this returns, queries see the old one."""
    import os

    if settings.qdrant_url:
        from qdrant_client import models

        store = open_collection(settings, physical)
        assert isinstance(store, ClientStore)
        try:
            client = store.client
            names = {c.name for c in client.get_collections().collections}
            if settings.collection in names:
                # A collection made before aliases holds the name: it must go before the alias can take it.
                client.delete_collection(settings.collection)
            client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=physical, alias_name=settings.collection)
                    )
                ]
            )
        finally:
            store.close()
        return
    settings.qdrant_path.mkdir(parents=True, exist_ok=True)
    pointer = settings.qdrant_path / f"{settings.collection}.live"
    temporary = pointer.with_suffix(".live.tmp")
    temporary.write_text(physical)
    os.replace(temporary, pointer)


def open_collection(settings: Settings, name: str, *, lock_wait: float = 5.0) -> VectorStore:
    """One physical collection of the configured engine."""
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ClientStore(name, url=settings.qdrant_url, api_key=api_key, timeout=settings.qdrant_timeout)
    if settings.embedded_store == "local":
        return ClientStore(
            name,
            path=settings.qdrant_path / "local" / name
            if name != settings.collection
            else settings.qdrant_path / "local",
        )
    return EdgeStore(settings.qdrant_path, name, lock_wait=lock_wait)


def open_store(settings: Settings, *, lock_wait: float = 5.0) -> VectorStore:
    """The live collection of the store the settings name: a server when ``qdrant_url`` is set, else the
    embedded engine (waiting up to ``lock_wait`` seconds while another process holds its directory)."""
    return open_collection(settings, live_collection(settings), lock_wait=lock_wait)
