"""Micro-batching inside a fetch process: many download threads, one embedding message per batch.

Each fetch task hands its prepared image to :meth:`Batcher.submit` and blocks until the batch holding it has
been handed on (published to the embed queue). A batch goes when it is full, or when its oldest item has
waited ``linger`` seconds. Because the task returns only after its batch was published, a fetch job is
acknowledged only once its successor message exists: a crash loses nothing, it re-runs the fetch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class _Batch:
    __slots__ = ("done", "error", "items")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.done = threading.Event()
        self.error: BaseException | None = None


class Batcher:
    def __init__(self, send: Callable[[list[Any]], None], size: int, linger: float) -> None:
        self._send = send
        self.size = max(1, size)
        self.linger = max(0.0, linger)
        self._lock = threading.Lock()
        self._current = _Batch()

    def submit(self, item: Any) -> None:
        """Add ``item``; return once its batch was sent, or raise what sending it raised."""
        with self._lock:
            batch = self._current
            batch.items.append(item)
            full = len(batch.items) >= self.size
            if full:
                self._current = _Batch()
        if full:
            self._flush(batch)
        elif not batch.done.wait(self.linger):
            with self._lock:
                mine = self._current is batch
                if mine:
                    self._current = _Batch()
            if mine:
                self._flush(batch)
        batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _flush(self, batch: _Batch) -> None:
        try:
            self._send(batch.items)
        except BaseException as exc:
            batch.error = exc
        finally:
            batch.done.set()
