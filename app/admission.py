"""Admission control: a bounded number of searches in flight in this process; past it, refused at once.

Without a bound, a burst is never refused, only timed out: 50 concurrent 10 MB uploads all waited (up to 28 s,
then 504) while the API held every body in memory (2 GiB). With one, the searches past the bound get 503
``overloaded`` with ``Retry-After`` straight away, before their body is read into memory, and those admitted
are answered in the time the query workers need for them. The bound is ``LOOKALIKE_API_MAX_SEARCHES``: by
default 32 per query encoding process (``LOOKALIKE_QUERY_CONCURRENCY``), one to two seconds of their work at
ViT-B/32 cost, enough for a burst of a few dozen shoppers at once. An admitted upload waiting for its decode
holds its spool file, not its photo, in memory (see ``QueryPreparer.reduce_upload``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lookalike.state.errors import Overloaded


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextmanager
    def admit(self) -> Iterator[None]:
        """One search in flight for the duration of the block; :class:`Overloaded` at once when full."""
        with self._lock:
            if self._in_flight >= self.limit:
                raise Overloaded(f"{self.limit} searches are in flight already (LOOKALIKE_API_MAX_SEARCHES)")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1


__all__ = ["Admission"]
