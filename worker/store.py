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


class StoreError(RuntimeError):
    """The store refused an operation for a reason retrying will not fix."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retry later."""


class StoreLocked(StoreUnavailable):
    """The embedded store's directory is open in another process. Retried like an unreachable store: a store
    owner being restarted holds it for a moment; a batch that finds it so waits rather than fails."""


@dataclass(frozen=True)
class PointRecord:
    id: str
    vector: Sequence[float] | np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


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

    def product_ids(self) -> set[str]:
        return {str(payload.get("product_id")) for _id, payload, _vector in self.scroll()}


# --------------------------------------------------------------------------------------------- edge engine
class EdgeStore(VectorStore):
    def __init__(self, root: Path, collection: str, *, lock_wait: float = 5.0) -> None:
        self.collection = collection
        self.path = Path(root) / collection
        self.lock_wait = lock_wait
        self._shard: Any = None
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
            self.path.mkdir(parents=True, exist_ok=True)
            self._open(EdgeConfig(vectors=EdgeVectorParams(size=dim, distance=Distance.Cosine)))
        vectors = self.shard.info()
        existing = self._vector_size()
        if existing is not None and existing != dim:
            raise StoreError(
                f"collection {self.collection!r} holds {existing}-d vectors but the model gives {dim}-d;"
                " use another LOOKALIKE_COLLECTION"
            )
        schema = vectors.payload_schema
        for name in INDEXED_FIELDS:
            if name not in schema:
                self.shard.update(UpdateOperation.create_field_index(name, PayloadSchemaType.Keyword))

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
        batch = [Point(p.id, np.asarray(p.vector, dtype=np.float32).tolist(), present(p.payload)) for p in points]
        self.shard.update(UpdateOperation.upsert_points(batch))

    @staticmethod
    def _match(key: str, value: str) -> Any:
        from qdrant_edge import FieldCondition, Filter, MatchValue

        return Filter(must=[FieldCondition(key, match=MatchValue(value))])

    def search(self, vector: Sequence[float], limit: int, category: str | None = None) -> list[Hit]:
        from qdrant_edge import Query, QueryRequest

        if self._shard is None:
            return []
        request = QueryRequest(
            limit=limit,
            query=Query.Nearest(np.asarray(vector, dtype=np.float32).tolist()),
            with_payload=True,
            filter=self._match("categories", category) if category else None,
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in self.shard.query(request)]

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
                    vector = vector.get("")
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
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                )
            except (StoreError, ValueError) as exc:
                # Another worker created it between the check and the create.
                if not self._call("collection check", self.client.collection_exists, self.collection):
                    raise StoreError(str(exc)) from exc
        info = self._call("collection info", self.client.get_collection, self.collection)
        params = info.config.params.vectors
        size = getattr(params, "size", None)
        if size is not None and size != dim:
            raise StoreError(
                f"collection {self.collection!r} holds {size}-d vectors but the model gives {dim}-d;"
                " use another LOOKALIKE_COLLECTION"
            )
        existing = set((info.payload_schema or {}).keys())
        for name in INDEXED_FIELDS:
            if name not in existing and self._is_server:
                self._call(
                    "create payload index",
                    self.client.create_payload_index,
                    self.collection,
                    field_name=name,
                    field_schema=models.PayloadSchemaType.KEYWORD,
                    wait=True,
                )
        self._known = True

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
        structs = [
            models.PointStruct(
                id=p.id, vector=np.asarray(p.vector, dtype=np.float32).tolist(), payload=present(p.payload)
            )
            for p in points
        ]
        self._call("upsert", self.client.upsert, self.collection, points=structs, wait=True)

    def search(self, vector: Sequence[float], limit: int, category: str | None = None) -> list[Hit]:
        if not self._exists():
            return []
        response = self._call(
            "search",
            self.client.query_points,
            self.collection,
            query=np.asarray(vector, dtype=np.float32).tolist(),
            limit=limit,
            with_payload=True,
            query_filter=self._filter("categories", category) if category else None,
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

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


def open_store(settings: Settings, *, lock_wait: float = 5.0) -> VectorStore:
    """The store the settings name: a server when ``qdrant_url`` is set, else the embedded engine (waiting up
    to ``lock_wait`` seconds while another process holds its directory)."""
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ClientStore(
            settings.collection, url=settings.qdrant_url, api_key=api_key, timeout=settings.qdrant_timeout
        )
    if settings.embedded_store == "local":
        return ClientStore(settings.collection, path=settings.qdrant_path / "local")
    return EdgeStore(settings.qdrant_path, settings.collection, lock_wait=lock_wait)
