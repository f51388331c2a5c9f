"""Per-process heavy objects, built once, rebuilt after a fork: the one mechanism for "the process's X".

A worker process holds a few objects that are costly to build and unsafe to share with a parent across
``fork()``: the model (an ONNX Runtime session shares thread pools and locks with the process that built it),
the store (the embedded one holds a directory lock), the HTTP session (its sockets), the fetch batcher (its
threads). Like Immich's model cache, each is asked for by a key and built by a factory on first use; an entry
built by another pid is never returned, so a prefork child always builds its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class ProcessCache:
    """``get(key, factory)``: this process's object for ``key``, built once even under concurrent first calls."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._items: dict[Hashable, Any] = {}

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        with self._lock:
            if self._pid != os.getpid():
                # Inherited from a parent: drop (never close: the parent still owns them) and start afresh.
                self._items = {}
                self._pid = os.getpid()
            if key not in self._items:
                self._items[key] = factory()
            return self._items[key]

    def peek(self, key: Hashable) -> Any:
        with self._lock:
            return self._items.get(key) if self._pid == os.getpid() else None

    def pop(self, key: Hashable) -> Any:
        """Forget ``key``'s object and return it (None when absent or inherited), for the caller to close."""
        with self._lock:
            if self._pid != os.getpid():
                return None
            return self._items.pop(key, None)


#: The process-wide cache: the worker context, the embedder, the fetch batcher.
process_cache = ProcessCache()
