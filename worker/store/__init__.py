"""Index stage: the vector store, behind one contract (:class:`VectorStore`, :mod:`.base`) with two engines.

* :class:`EdgeStore` (:mod:`.edge`) - the embedded default: ``qdrant-edge-py``, Qdrant's own engine running
  in-process on a directory. One process may open a directory at a time.
* :class:`ClientStore` (:mod:`.client`) - ``qdrant-client`` against a Qdrant server (``LOOKALIKE_QDRANT_URL``),
  which takes any number of workers, or its local mode on a path (``LOOKALIKE_EMBEDDED_STORE=local``).

Both keep one collection of cosine vectors whose payload is the product's fields plus ``image_url``, with
payload indexes on the keys filters and facets read. This module chooses the engine the settings name and
knows which physical collection is live.
"""

from __future__ import annotations

import os

from lookalike.config.settings import Settings
from lookalike.worker.store.base import (
    DENSE,
    LEGACY,
    NAMED,
    SCROLL_PAGE,
    SPARSE,
    Hit,
    Narrowing,
    PointRecord,
    Sparse,
    StoreError,
    StoreLocked,
    StoreUnavailable,
    VectorStore,
    absent,
    needs_reindex,
    present,
)
from lookalike.worker.store.client import ClientStore
from lookalike.worker.store.edge import EdgeStore

__all__ = [
    "DENSE",
    "LEGACY",
    "NAMED",
    "SCROLL_PAGE",
    "SPARSE",
    "ClientStore",
    "EdgeStore",
    "Hit",
    "Narrowing",
    "PointRecord",
    "Sparse",
    "StoreError",
    "StoreLocked",
    "StoreUnavailable",
    "VectorStore",
    "absent",
    "live_collection",
    "needs_reindex",
    "open_collection",
    "open_store",
    "present",
    "switch_live",
]


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
    if settings.qdrant_url:
        store = open_collection(settings, physical)
        assert isinstance(store, ClientStore)
        try:
            store.point_alias(settings.collection)
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
