"""Micro-batching inside a fetch process: many download threads, one embedding message per batch.

Each fetch task hands its prepared image to :meth:`Batcher.submit` and blocks until the batch holding it has
been handed on (published to the embed queue). A batch goes when it is full; or, partial, when no item has
joined it for ``linger`` seconds (the images stopped coming: a lone change event waits no longer than that), or
when its oldest item has waited ``max_linger`` seconds (a steady trickle still leaves in time). While images keep
coming the batch keeps filling, so a catalogue's batches leave full and the per-message cost of every later stage
(the embedding pool's parent, the store owner, the broker) is paid once per ``size`` images, not once per 0.1 s.
Because the task returns only after its batch was published, a fetch job is acknowledged only once its successor
message exists: a crash loses nothing, it re-runs the fetch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class _Batch:
    __slots__ = ("done", "error", "first", "items", "last")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.first = self.last = 0.0  # monotonic times its first and its latest item joined


class Batcher:
    def __init__(
        self, send: Callable[[list[Any]], None], size: int, linger: float, max_linger: float | None = None
    ) -> None:
        self._send = send
        self.size = max(1, size)
        self.linger = max(0.0, linger)
        # Never shorter than the quiet gap: max_linger == linger is a fixed linger from the first item.
        self.max_linger = max(self.linger, linger if max_linger is None else max_linger)
        self._lock = threading.Lock()
        self._current = _Batch()

    def submit(self, item: Any) -> None:
        """Add ``item``; return once its batch was sent, or raise what sending it raised."""
        with self._lock:
            batch = self._current
            now = time.monotonic()
            if not batch.items:
                batch.first = now
            batch.last = now
            batch.items.append(item)
            full = len(batch.items) >= self.size
            if full:
                self._current = _Batch()
        if full:
            self._flush(batch)
        else:
            self._await(batch)
        batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _await(self, batch: _Batch) -> None:
        """Wait until the batch is sent by someone else, or send it when it is due (the first waiter to see it)."""
        while True:
            with self._lock:
                if self._current is not batch:
                    return  # full, or taken by another waiter: it is being sent
                now = time.monotonic()
                due = min(batch.last + self.linger, batch.first + self.max_linger)
                if now >= due:
                    self._current = _Batch()
                    break
            if batch.done.wait(due - now):
                return
        self._flush(batch)

    def _flush(self, batch: _Batch) -> None:
        try:
            self._send(batch.items)
        except BaseException as exc:
            batch.error = exc
        finally:
            batch.done.set()
