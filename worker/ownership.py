"""A collection belongs to one model: the record of which one, and the refusal of vectors from any other.

Each collection records the fingerprint (:mod:`lookalike.worker.fingerprint`) of the vision model whose vectors
it holds and of the text model its word queries need. The store owner refuses a batch whose vectors were made by
another vision model (:class:`ModelMismatch`: nothing is written, the jobs go to the dead-letter list with
reason ``model_mismatch``), and queries are embedded with the model the live collection records.

Where the record lives: with the collection itself, so it survives whatever the vectors survive and nothing
else. On a Qdrant server it is the collection's metadata (key ``lookalike_model``); an embedded store keeps it in
``<collection>.model.json`` beside the collection's directory, replaced atomically, readable by any process on
the machine while the store owner holds the collection's lock. Redis was the other candidate and the wrong
one: losing Redis (a flush, a new instance) would forget which model filled an intact collection, and the
first worker to write after it would be believed. Redis only holds the last refusal, for `lookalike status`.

An index made before collections recorded their model is adopted on first use with the configured models: the
record says ``adopted`` and the store owner logs it once, when it writes the record.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import redis

from lookalike.config.settings import Settings
from lookalike.state.process import process_cache
from lookalike.worker.fingerprint import TEXT_FILES, VISION_FILES, ModelId, model_id

log = logging.getLogger(__name__)

METADATA_KEY = "lookalike_model"
MISMATCH = "model_mismatch"
RECORD_MAX_AGE = 2.0  # seconds a query-encoding process trusts its copy of the live record (a switch shows after)
REFUSAL_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class CollectionModel:
    """The models a collection belongs to."""

    vision: ModelId
    text: ModelId
    adopted: bool = False  # recorded on an index that predates the record, with the models configured then
    recorded_at: float = 0.0
    # Filled by `lookalike reindex --model` to replace another collection: its name and its vision model. Workers
    # still configured with that model write with this one once it is live (they follow the reindex).
    replaces: str | None = None
    previous: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "vision": self.vision.to_data(),
            "text": self.text.to_data(),
            "adopted": self.adopted,
            "recorded_at": self.recorded_at,
            "replaces": self.replaces,
            "previous": self.previous,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> CollectionModel:
        return cls(
            ModelId.from_data(data["vision"]),
            ModelId.from_data(data["text"]),
            bool(data.get("adopted", False)),
            float(data.get("recorded_at", 0.0)),
            data.get("replaces"),
            data.get("previous"),
        )


class ModelMismatch(RuntimeError):
    """Vectors from one model offered to a collection that belongs to another. Nothing was written."""

    def __init__(self, collection: str, recorded: str, offered: str, what: str = "vision") -> None:
        super().__init__(
            f"collection {collection!r} belongs to {what} model {recorded}, but these vectors come from {offered}: "
            "nothing written (point this worker's model setting back at the collection's model, or move the "
            "collection to the new model with `lookalike reindex --model`)"
        )
        self.collection = collection
        self.recorded = recorded
        self.offered = offered


def configured_vision(settings: Settings) -> ModelId:
    return model_id(settings.model, settings.model_dir, VISION_FILES)


def configured_text(settings: Settings) -> ModelId:
    return model_id(settings.text_model, settings.text_model_dir, TEXT_FILES)


def configured_models(settings: Settings, *, adopted: bool = False) -> CollectionModel:
    return CollectionModel(configured_vision(settings), configured_text(settings), adopted, time.time())


# ------------------------------------------------------------------------------------- the stored record
def _record_file(settings: Settings, collection: str) -> Any:
    return settings.qdrant_path / f"{collection}.model.json"


def _server_client(settings: Settings) -> Any:
    from qdrant_client import QdrantClient

    def build() -> Any:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=int(settings.qdrant_timeout) or 1)

    return process_cache.get(("ownership-client", settings.qdrant_url), build)


def read_record(settings: Settings, collection: str) -> CollectionModel | None:
    """The collection's record, or None when it has none (a new collection, or one made before records)."""
    if settings.qdrant_url:
        client = _server_client(settings)
        try:
            if not client.collection_exists(collection):
                return None
            metadata = client.get_collection(collection).config.metadata or {}
        except Exception as exc:  # the server's errors come from httpx, grpc or qdrant-client: all mean "not now"
            from lookalike.worker.store import StoreUnavailable

            raise StoreUnavailable(f"cannot read the model record of collection {collection!r}: {exc}") from exc
        data = metadata.get(METADATA_KEY)
    else:
        try:
            data = json.loads(_record_file(settings, collection).read_text())
        except FileNotFoundError:
            return None
    return None if not data else CollectionModel.from_data(data)


def write_record(settings: Settings, collection: str, record: CollectionModel) -> None:
    """Record the collection's models (the collection must exist on a server; an embedded file can come first)."""
    if settings.qdrant_url:
        _server_client(settings).update_collection(collection, metadata={METADATA_KEY: record.to_data()})
        return
    path = _record_file(settings, collection)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record.to_data(), indent=2))
    os.replace(temporary, path)


def delete_record(settings: Settings, collection: str) -> None:
    if not settings.qdrant_url:
        _record_file(settings, collection).unlink(missing_ok=True)


def adopt(settings: Settings, collection: str, points: int) -> CollectionModel:
    """Give a collection without a record the configured models; say so once (when there were points)."""
    record = configured_models(settings, adopted=points > 0)
    write_record(settings, collection, record)
    if points:
        log.warning(
            "collection %r (%d points) recorded no model: adopted with the configured vision model %s and text "
            "model %s",
            collection,
            points,
            record.vision.describe(),
            record.text.describe(),
        )
    return record


class ModelBook:
    """Which model a process embeds with for which collection (one per worker process).

    Records are read again when this copy is older than :data:`RECORD_MAX_AGE`, so a switch reaches every process
    within that time; the store owner checks every stamp against the record it holds anyway.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._records: dict[str, tuple[float, CollectionModel | None]] = {}
        self._live: tuple[float, str] | None = None
        self._configured: CollectionModel | None = None

    def live_name(self) -> str:
        """The live collection's name, read again (a file on an embedded store) at most every RECORD_MAX_AGE."""
        from lookalike.worker.store import live_collection

        now = time.monotonic()
        if self._live is None or now - self._live[0] > RECORD_MAX_AGE:
            self._live = (now, live_collection(self.settings))
        return self._live[1]

    def record(self, collection: str) -> CollectionModel | None:
        now = time.monotonic()
        cached = self._records.get(collection)
        if cached is None or now - cached[0] > RECORD_MAX_AGE:
            cached = (now, read_record(self.settings, collection))
            self._records[collection] = cached
        return cached[1]

    def for_collection(self, collection: str | None) -> CollectionModel:
        """The models of ``collection`` (None: the live one; the configured models while it has no record)."""
        from lookalike.worker.store import StoreError

        record = self.record(collection or self.live_name())
        if record is None:
            if collection is not None:
                raise StoreError(f"collection {collection!r} has no model record")
            if self._configured is None:
                self._configured = configured_models(self.settings)
            return self._configured
        return record

    def for_writing(self, collection: str | None, configured: ModelId) -> ModelId:
        """The vision model a job for ``collection`` is embedded with: a named collection's own; for the live
        one the configured model, or the live one's when a reindex moved it off the configured model (the
        worker follows it). Any other difference is left to the store owner, which refuses the vectors."""
        record = self.for_collection(collection)
        if collection is not None:
            return record.vision
        if record.vision.fingerprint != configured.fingerprint and record.previous == configured.fingerprint:
            return record.vision
        return configured


def loadable(recorded: ModelId, configured: ModelId, spec: Any, files: tuple[str, ...]) -> Any | None:
    """``spec`` (the configured model's) when ``recorded`` is the configured model; else the same spec pointed at
    ``recorded``'s directory if this machine holds exactly that model there; else None."""
    import dataclasses
    from pathlib import Path

    if recorded.fingerprint == configured.fingerprint:
        return spec
    directory = Path(recorded.directory) if recorded.directory else None
    if model_id(recorded.name, directory, files).fingerprint != recorded.fingerprint:
        return None
    return dataclasses.replace(spec, name=recorded.name, local_dir=directory)


# ------------------------------------------------------------------------------- refusals, for `status`
def _refusal_key(settings: Settings) -> str:
    return settings.key("model", "refused")


def remember_refusal(client: redis.Redis, settings: Settings, mismatch: ModelMismatch, jobs: int) -> None:
    key = _refusal_key(settings)
    pipe = client.pipeline(transaction=False)
    pipe.hset(
        key,
        mapping={
            "collection": mismatch.collection,
            "collection_model": mismatch.recorded,
            "worker_model": mismatch.offered,
            "last_at": time.time(),
            "reason": str(mismatch),
        },
    )
    pipe.hincrby(key, "jobs", jobs)
    pipe.expire(key, REFUSAL_TTL)
    pipe.execute()


def forget_refusal(client: redis.Redis, settings: Settings) -> None:
    client.delete(_refusal_key(settings))


def last_refusal(client: redis.Redis, settings: Settings) -> dict[str, Any] | None:
    raw = client.hgetall(_refusal_key(settings))
    if not raw:
        return None
    data = {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]
    return {**data, "jobs": int(data.get("jobs", 0)), "last_at": float(data.get("last_at", 0.0))}
