"""The server engine: ``qdrant-client`` against a Qdrant server (``LOOKALIKE_QDRANT_URL``), which takes any
number of workers. The same class runs qdrant-client's local mode on a path, which speaks the server's API and
is how the tests cover the server code path without a server.

Every call goes through :meth:`ClientStore._call`, which sorts the client's errors into the store's two: an
outage to retry (:class:`StoreUnavailable`) or a refusal (:class:`StoreError`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lookalike.worker.store import base
from lookalike.worker.store.base import VectorStore

# What each query shape is called in an error message.
QUERY_NAMES = {
    base.Nearest: "search",
    base.Diverse: "search",
    base.NearestKeywords: "keyword search",
    base.BestScore: "recommend",
    base.Fused: "hybrid search",
}


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
                raise base.StoreLocked(f"the local store {path} is open in another process") from exc
            raise
        self._known = False

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            return fn(*args, **kwargs)
        except ResponseHandlingException as exc:
            raise base.StoreUnavailable(f"Qdrant unreachable during {what}: {exc}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code is None or exc.status_code == 429 or exc.status_code >= 500:
                raise base.StoreUnavailable(f"Qdrant answered {exc.status_code} during {what}") from exc
            raise base.StoreError(f"Qdrant refused {what}: {exc.status_code} {exc.content[:200]!r}") from exc
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise base.StoreUnavailable(f"Qdrant unreachable during {what}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore", "grpc")):
                raise base.StoreUnavailable(f"Qdrant unreachable during {what}: {exc}") from exc
            raise

    def _on(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """One call about this collection."""
        return self._call(what, fn, self.collection, **kwargs)

    def close(self) -> None:
        self.client.close()

    def point_alias(self, alias: str) -> None:
        """Make ``alias`` name this collection, all at once (a server's `lookalike reindex` switch)."""
        from qdrant_client import models

        names = {c.name for c in self._call("collection list", self.client.get_collections).collections}
        if alias in names:
            # A collection made before aliases holds the name: it must go before the alias can take it.
            self._call("delete collection", self.client.delete_collection, alias)
        create = models.CreateAlias(collection_name=self.collection, alias_name=alias)
        self._call(
            "alias switch",
            self.client.update_collection_aliases,
            change_aliases_operations=[models.CreateAliasOperation(create_alias=create)],
        )

    # -- collection ----------------------------------------------------------------------------------
    def _exists(self) -> bool:
        if not self._known:
            self._known = bool(self._on("collection check", self.client.collection_exists))
        return self._known

    def _create(self, dim: int) -> None:
        from qdrant_client import models

        try:
            self._on(
                "create collection",
                self.client.create_collection,
                vectors_config={base.DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
                sparse_vectors_config={base.SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
        except (base.StoreError, ValueError) as exc:
            # Another worker created it between the check and the create.
            if not self._on("collection check", self.client.collection_exists):
                raise base.StoreError(str(exc)) from exc
        self._known = True

    def _info(self) -> Any:
        return self._on("collection info", self.client.get_collection)

    def _read_layout(self) -> str | None:
        return base.NAMED if isinstance(self._info().config.params.vectors, dict) else base.LEGACY

    def _dense_size(self) -> int | None:
        params = self._info().config.params.vectors
        if isinstance(params, dict):
            params = params.get(base.DENSE)
        return getattr(params, "size", None)

    def _indexed(self) -> set[str]:
        return set((self._info().payload_schema or {}).keys())

    def _create_index(self, key: str, kind: base.IndexKind) -> None:
        from qdrant_client import models

        if not self._is_server:
            return  # local mode has no payload indexes (it scans)
        schema = {
            "keyword": models.PayloadSchemaType.KEYWORD,
            "float": models.PayloadSchemaType.FLOAT,
            "integer": models.PayloadSchemaType.INTEGER,
        }[kind]
        self._on(
            "create payload index", self.client.create_payload_index, field_name=key, field_schema=schema, wait=True
        )

    # -- translation ---------------------------------------------------------------------------------
    @staticmethod
    def _condition(condition: base.Condition) -> Any:
        from qdrant_client import models

        if isinstance(condition, base.Match):
            return models.FieldCondition(key=condition.key, match=models.MatchValue(value=condition.value))
        if isinstance(condition, base.MatchAny):
            return models.FieldCondition(key=condition.key, match=models.MatchAny(any=list(condition.values)))
        return models.FieldCondition(key=condition.key, range=models.Range(gte=condition.gte, lte=condition.lte))

    def _filter(self, where: base.Where | None) -> Any:
        from qdrant_client import models

        if where is None:
            return None
        return models.Filter(
            must=[self._condition(c) for c in where.must] or None,
            must_not=[self._condition(c) for c in where.must_not] or None,
        )

    def _points(self, selector: base.Selector) -> Any:
        from qdrant_client import models

        if isinstance(selector, base.Where):
            return models.FilterSelector(filter=self._filter(selector))
        return models.PointIdsList(points=list(selector))

    def _sparse(self, keywords: base.Sparse) -> Any:
        from qdrant_client import models

        return models.SparseVector(indices=list(keywords[0]), values=[float(v) for v in keywords[1]])

    def _native_query(self, query: base.Scored) -> tuple[Any, str | None]:
        """The client's query and the vector it uses."""
        from qdrant_client import models

        if isinstance(query, base.Nearest):
            return query.vector, query.using
        if isinstance(query, base.NearestKeywords):
            return self._sparse(query.keywords), base.SPARSE
        if isinstance(query, base.Diverse):
            mmr = models.Mmr(diversity=query.diversity, candidates_limit=query.candidates)
            return models.NearestQuery(nearest=query.vector, mmr=mmr), query.using
        strategy = models.RecommendStrategy.BEST_SCORE
        recommend = models.RecommendInput(positive=query.positives, strategy=strategy)
        return models.RecommendQuery(recommend=recommend), query.using

    def _prefetch(self, prefetch: base.Prefetch) -> Any:
        from qdrant_client import models

        native, using = self._native_query(prefetch.query)
        flt = self._filter(prefetch.where)
        return models.Prefetch(
            query=native, using=using, limit=prefetch.limit, filter=flt, score_threshold=prefetch.score_threshold
        )

    # -- writes --------------------------------------------------------------------------------------
    def _upsert(self, points: list[tuple[str, base.Vectors, dict[str, Any]]]) -> None:
        from qdrant_client import models

        structs = [models.PointStruct(id=i, vector=self._native(v), payload=payload) for i, v, payload in points]
        self._on("upsert", self.client.upsert, points=structs, wait=True)

    def _set_vectors(self, ids: list[str], vectors: dict[str, Any]) -> None:
        from qdrant_client import models

        points = [models.PointVectors(id=i, vector=self._native(vectors)) for i in ids]
        self._on("update vectors", self.client.update_vectors, points=points, wait=True)

    def _set_payload(self, selector: base.Selector, payload: dict[str, Any]) -> None:
        points = self._filter(selector) if isinstance(selector, base.Where) else selector
        self._on("set payload", self.client.set_payload, payload=payload, points=points, wait=True)

    def _delete_payload(self, where: base.Where, keys: list[str]) -> None:
        self._on("delete payload", self.client.delete_payload, keys=keys, points=self._filter(where), wait=True)

    def _delete(self, selector: base.Selector) -> None:
        self._on("delete", self.client.delete, points_selector=self._points(selector), wait=True)

    # -- reads ---------------------------------------------------------------------------------------
    def _scroll_page(
        self, where: base.Where | None, offset: Any, with_vectors: bool, *, limit: int = base.SCROLL_PAGE
    ) -> tuple[list[base.ScrollRow], Any]:
        page = {"limit": limit, "offset": offset, "with_payload": True, "with_vectors": with_vectors}
        records, offset = self._on("scroll", self.client.scroll, scroll_filter=self._filter(where), **page)
        return [(str(r.id), dict(r.payload or {}), r.vector if with_vectors else None) for r in records], offset

    def _count(self, where: base.Where | None) -> int:
        result = self._on("count", self.client.count, count_filter=self._filter(where), exact=True)
        return int(result.count)

    def _query(
        self, query: base.Query, limit: int, where: base.Where | None, score_threshold: float | None
    ) -> list[base.Hit]:
        from qdrant_client import models

        shape: dict[str, Any]
        if isinstance(query, base.Fused):
            prefetch = [self._prefetch(p) for p in query.prefetches]
            shape = {"prefetch": prefetch, "query": models.FusionQuery(fusion=models.Fusion.RRF)}
        else:
            native, using = self._native_query(query)
            shape = {"query": native, "using": using, "query_filter": self._filter(where)}
            shape["score_threshold"] = score_threshold
        response = self._on(QUERY_NAMES[type(query)], self.client.query_points, with_payload=True, limit=limit, **shape)
        return base.hits(response.points)

    def _query_batch(
        self, queries: list[base.Nearest], limit: int, wheres: list[base.Where | None], score_threshold: float
    ) -> list[list[base.Hit]]:
        from qdrant_client import models

        requests = [
            models.QueryRequest(
                query=query.vector,
                using=query.using,
                limit=limit,
                filter=self._filter(where),
                score_threshold=score_threshold,
                with_payload=True,
            )
            for query, where in zip(queries, wheres, strict=True)
        ]
        responses = self._on("search", self.client.query_batch_points, requests=requests)
        return [base.hits(response.points) for response in responses]

