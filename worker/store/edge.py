"""The embedded engine: ``qdrant-edge-py``, Qdrant's own engine (HNSW, WAL, payload indexes) running
in-process on a directory. One process may open a directory at a time (:class:`StoreLocked` otherwise)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from lookalike.worker.store import base
from lookalike.worker.store.base import VectorStore


class EdgeStore(VectorStore):
    def __init__(self, root: Path, collection: str, *, lock_wait: float = 5.0) -> None:
        self.collection = collection
        self.path = Path(root) / collection
        self.lock_wait = lock_wait
        self._shard: Any = None
        if (self.path / "edge_config.json").exists() or (self.path / "wal").exists():
            self._open()

    # -- opening -------------------------------------------------------------------------------------
    def _open(self, config: Any = None) -> None:
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                self._open_once(config)
                return
            except base.StoreLocked:
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
                raise base.StoreLocked(
                    f"the embedded store {self.path} is open in another process (a running `lookalike worker`?);"
                    " send work through the broker, or point LOOKALIKE_QDRANT_URL at a Qdrant server"
                ) from exc
            raise base.StoreError(f"cannot open the embedded store {self.path}: {exc}") from exc

    @property
    def shard(self) -> Any:
        if self._shard is None:
            raise base.StoreError(f"collection {self.collection!r} does not exist yet at {self.path}")
        return self._shard

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

    # -- collection ----------------------------------------------------------------------------------
    def _exists(self) -> bool:
        return self._shard is not None

    def _create(self, dim: int) -> None:
        from qdrant_edge import Distance, EdgeConfig, EdgeSparseVectorParams, EdgeVectorParams, Modifier

        self.path.mkdir(parents=True, exist_ok=True)
        self._open(
            EdgeConfig(
                vectors={base.DENSE: EdgeVectorParams(size=dim, distance=Distance.Cosine)},
                sparse_vectors={base.SPARSE: EdgeSparseVectorParams(modifier=Modifier.Idf)},
            )
        )

    def _config_vectors(self) -> dict[str, Any] | None:
        """The shard's vector configuration as its config file says (None when it has none yet)."""
        config_file = self.path / "edge_config.json"
        if not config_file.exists():
            return None
        vectors = json.loads(config_file.read_text()).get("vectors", {})
        return vectors if isinstance(vectors, dict) else None

    def _read_layout(self) -> str | None:
        vectors = self._config_vectors()
        if vectors is None:
            return None
        return base.NAMED if base.DENSE in vectors else base.LEGACY

    def _dense_size(self) -> int | None:
        try:
            first = next(iter((self._config_vectors() or {}).values()), None)
            return int(first["size"]) if first else None
        except (ValueError, KeyError, TypeError):
            return None

    def _indexed(self) -> set[str]:
        return set(self.shard.info().payload_schema)

    def _create_index(self, key: str, kind: base.IndexKind) -> None:
        from qdrant_edge import PayloadSchemaType, UpdateOperation

        schema = {
            "keyword": PayloadSchemaType.Keyword,
            "float": PayloadSchemaType.Float,
            "integer": PayloadSchemaType.Integer,
        }[kind]
        self.shard.update(UpdateOperation.create_field_index(key, schema))

    # -- translation ---------------------------------------------------------------------------------
    @staticmethod
    def _condition(condition: base.Condition) -> Any:
        from qdrant_edge import FieldCondition, MatchAny, MatchValue, RangeFloat

        if isinstance(condition, base.Match):
            return FieldCondition(condition.key, match=MatchValue(condition.value))
        if isinstance(condition, base.MatchAny):
            return FieldCondition(condition.key, match=MatchAny(list(condition.values)))
        return FieldCondition(condition.key, range=RangeFloat(gte=condition.gte, lte=condition.lte))

    def _filter(self, where: base.Where | None) -> Any:
        from qdrant_edge import Filter

        if where is None:
            return None
        return Filter(
            must=[self._condition(c) for c in where.must] or None,
            must_not=[self._condition(c) for c in where.must_not] or None,
        )

    def _sparse(self, keywords: base.Sparse) -> Any:
        from qdrant_edge import SparseVector

        return SparseVector(list(keywords[0]), [float(v) for v in keywords[1]])

    def _native_query(self, query: base.Scored) -> Any:
        from qdrant_edge import Mmr, Query, RecommendQuery

        if isinstance(query, base.Nearest):
            return Query.Nearest(query.vector, using=query.using)
        if isinstance(query, base.NearestKeywords):
            return Query.Nearest(self._sparse(query.keywords), using=base.SPARSE)
        if isinstance(query, base.Diverse):
            return Mmr(query.vector, 1.0 - query.diversity, query.candidates, using=query.using)
        return Query.RecommendBestScore(RecommendQuery(query.positives, []), using=query.using)

    def _prefetch(self, prefetch: base.Prefetch) -> Any:
        from qdrant_edge import Prefetch as EdgePrefetch

        return EdgePrefetch(
            limit=prefetch.limit,
            query=self._native_query(prefetch.query),
            filter=self._filter(prefetch.where),
            score_threshold=prefetch.score_threshold,
        )

    @staticmethod
    def _ids(ids: list[str]) -> list[Any]:
        return [uuid.UUID(i) for i in ids]

    # -- writes --------------------------------------------------------------------------------------
    def _upsert(self, points: list[tuple[str, base.Vectors, dict[str, Any]]]) -> None:
        from qdrant_edge import Point, UpdateOperation

        batch = [Point(point_id, self._native(vectors), payload) for point_id, vectors, payload in points]
        self.shard.update(UpdateOperation.upsert_points(batch))

    def _set_vectors(self, ids: list[str], vectors: dict[str, Any]) -> None:
        from qdrant_edge import PointVectors, UpdateOperation

        native = self._native(vectors)
        self.shard.update(UpdateOperation.update_vectors([PointVectors(i, native) for i in self._ids(ids)]))

    def _set_payload(self, selector: base.Selector, payload: dict[str, Any]) -> None:
        from qdrant_edge import UpdateOperation

        if isinstance(selector, base.Where):
            self.shard.update(UpdateOperation.set_payload_by_filter(self._filter(selector), payload))
        else:
            self.shard.update(UpdateOperation.set_payload(self._ids(selector), payload))

    def _delete_payload(self, where: base.Where, keys: list[str]) -> None:
        from qdrant_edge import UpdateOperation

        self.shard.update(UpdateOperation.delete_payload_by_filter(self._filter(where), keys))

    def _delete(self, selector: base.Selector) -> None:
        from qdrant_edge import UpdateOperation

        if isinstance(selector, base.Where):
            self.shard.update(UpdateOperation.delete_points_by_filter(self._filter(selector)))
        else:
            self.shard.update(UpdateOperation.delete_points(self._ids(selector)))

    # -- reads ---------------------------------------------------------------------------------------
    def _scroll_page(
        self, where: base.Where | None, offset: Any, with_vectors: bool, *, limit: int = base.SCROLL_PAGE
    ) -> tuple[list[base.ScrollRow], Any]:
        from qdrant_edge import ScrollRequest

        records, offset = self.shard.scroll(
            ScrollRequest(
                offset=uuid.UUID(offset) if isinstance(offset, str) else offset,
                limit=limit,
                filter=self._filter(where),
                with_payload=True,
                with_vector=with_vectors,
            )
        )
        return [(str(r.id), dict(r.payload or {}), r.vector if with_vectors else None) for r in records], offset

    def _count(self, where: base.Where | None) -> int:
        from qdrant_edge import CountRequest

        return int(self.shard.count(CountRequest(exact=True, filter=self._filter(where))))

    def _query(
        self, query: base.Query, limit: int, where: base.Where | None, score_threshold: float | None
    ) -> list[base.Hit]:
        from qdrant_edge import Fusion, QueryRequest

        if isinstance(query, base.Fused):
            request = QueryRequest(
                limit=limit,
                prefetches=[self._prefetch(p) for p in query.prefetches],
                query=Fusion.Rrf(base.RRF_K),  # type: ignore[arg-type]
                with_payload=True,
            )
        else:
            request = QueryRequest(
                limit=limit,
                query=self._native_query(query),
                with_payload=True,
                filter=self._filter(where),
                score_threshold=score_threshold,
            )
        return base.hits(self.shard.query(request))

    def _query_batch(
        self, queries: list[base.Nearest], limit: int, wheres: list[base.Where | None], score_threshold: float
    ) -> list[list[base.Hit]]:
        from qdrant_edge import QueryBatchRequest, QueryRequest

        requests = [
            QueryRequest(
                limit=limit,
                query=self._native_query(query),
                with_payload=True,
                filter=self._filter(where),
                score_threshold=score_threshold,
            )
            for query, where in zip(queries, wheres, strict=True)
        ]
        return [base.hits(points) for points in self.shard.query_batch(QueryBatchRequest(requests))]

