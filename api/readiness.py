"""/readyz from a reading taken in the background, so a probe never waits behind searches.

A load balancer asks /readyz every few seconds and pulls an instance that answers late or "not ready". Asking
the broker and reading which workers are alive takes a Redis round trip or two, and when that ran on the same
worker threads as searches, a busy API answered after 5 s that nothing was up. Here one thread of its own
refreshes the reading every ``interval`` seconds, and /readyz answers at once from the latest one; a reading
older than ``max_age`` (the thread is stuck on a dead broker) counts as not ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("lookalike.api")

Checks = dict[str, bool]


class ReadinessMonitor:
    def __init__(
        self, check: Callable[[], Checks], names: tuple[str, ...], *, interval: float = 1.0, max_age: float = 5.0
    ) -> None:
        self._check = check
        self.names = names
        self.interval = interval
        self.max_age = max_age
        self._reading: tuple[float, Checks] | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stop,), name="lookalike-readiness",
                                                daemon=True)  # fmt: skip
                self._thread.start()

    def stop(self) -> None:
        """The reading thread ends (an app that stopped serving); a later /readyz starts a new one."""
        with self._lock:
            self._stop.set()
            self._thread = None

    def _read_once(self) -> None:
        try:
            checks = self._check()
            checks = {name: bool(checks.get(name, False)) for name in self.names}
        except Exception as exc:  # a readiness reading is a reading; it never fails
            log.warning("readiness check failed: %r", exc)
            checks = dict.fromkeys(self.names, False)
        self._reading = (time.monotonic(), checks)
        self._first.set()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._read_once()
            stop.wait(self.interval)

    def wait_first(self, timeout: float) -> None:
        """Block (in a thread of the caller's own) until the first reading exists, at most ``timeout`` seconds."""
        self.start()
        self._first.wait(timeout)

    def reading(self) -> tuple[Checks, float | None]:
        """(checks, age in seconds); every check False when there is no reading or it is older than max_age."""
        reading = self._reading
        if reading is None:
            return dict.fromkeys(self.names, False), None
        age = time.monotonic() - reading[0]
        if age > self.max_age:
            return dict.fromkeys(self.names, False), age
        return dict(reading[1]), age


__all__ = ["ReadinessMonitor"]
