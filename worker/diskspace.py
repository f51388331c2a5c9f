"""Free space under the embedded store, checked by the store owner before it writes.

The embedded engine memory-maps its files (WAL segments of 32 MiB, segments). When a page it writes finds no
room on the filesystem, the kernel does not fail the write: it kills the process with SIGBUS. So a full disk
cannot be caught as an error after the fact; it has to be seen coming. Before each write the store owner reads
the free space of the store's filesystem, and short of ``LOOKALIKE_STORE_MIN_FREE_BYTES`` it refuses to write
(:class:`StoreDiskFull`): the index batch goes back to its queue and waits, nothing is failed, and the
condition is shared (``status``, ``/readyz``, the metrics) and logged once a minute, not once a batch. The next
batch that finds room again writes as usual: work resumes by itself.

A Qdrant server keeps its files on its own machine: nothing here applies to it.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from lookalike.state.conditions import STORE_DISK_FULL, Conditions
from lookalike.state.errors import StoreUnavailable
from lookalike.state.ledger import Ledger

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# How long the shared condition outlives the last batch that found the disk full (batches come back every
# few seconds while it lasts; a store owner that died stops saying so within this).
CONDITION_TTL = 60.0
LOG_EVERY = 60.0
# The counter `lookalike metrics` exports as lookalike_store_disk_full_total.
DEFERRED_COUNTER = "store_disk_full"


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path`` (or its nearest existing
    parent, for a store not created yet)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stat = os.statvfs(probe)
    return stat.f_bavail * stat.f_frsize


def no_space(error: BaseException) -> bool:
    """An error that says the disk is full (ENOSPC, or an engine's text for it), anywhere in its chain."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return True
        if "no space left on device" in str(cause).lower():
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def mib(count: int) -> str:
    return f"{count / MIB:.1f}"


class StoreDiskFull(StoreUnavailable):
    """The store's filesystem is short of the free space a write needs: wait, do not fail."""

    def __init__(self, path: Path, free: int, minimum: int) -> None:
        self.path = path
        self.free = free
        self.minimum = minimum
        super().__init__(
            f"disk full at {path} ({mib(free)} MiB free; LOOKALIKE_STORE_MIN_FREE_BYTES keeps {mib(minimum)} MiB)"
        )

    @property
    def status_line(self) -> str:
        """What ``status`` and ``/readyz`` say."""
        return f"store: disk full at {self.path} ({mib(self.free)} MiB free)"


class DiskGuard:
    """The store owner's check before each write, with the shared condition and a log line a minute."""

    def __init__(
        self, path: Path, minimum: int, conditions: Conditions, ledger: Ledger, *, node: str = ""
    ) -> None:
        self.path = Path(path)
        self.minimum = minimum
        self.conditions = conditions
        self.ledger = ledger
        self.node = node
        self._full_since: float | None = None
        self._logged_at = 0.0
        self._deferred_since_log = 0

    def reading(self) -> StoreDiskFull | None:
        """The disk-full condition if it holds now (no side effects)."""
        if self.minimum <= 0:
            return None
        free = free_bytes(self.path)
        return StoreDiskFull(self.path, free, self.minimum) if free < self.minimum else None

    def check(self) -> None:
        """Raise :class:`StoreDiskFull` (after sharing the condition) when a write must wait; clear it when the
        space is back."""
        full = self.reading()
        if full is None:
            if self._full_since is not None:
                self._full_since = None
                self.conditions.clear(STORE_DISK_FULL)
                log.warning("store: space is back at %s: indexing resumes", self.path)
            return
        raise self.full(full)

    def full(self, full: StoreDiskFull) -> StoreDiskFull:
        """Share, count and (at most once a minute) log a write that must wait; returns the error to raise."""
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        self.conditions.report(
            STORE_DISK_FULL,
            full.status_line,
            ttl=CONDITION_TTL,
            path=str(full.path),
            free_bytes=full.free,
            min_free_bytes=full.minimum,
            node=self.node,
        )
        self.ledger.count_global({DEFERRED_COUNTER: 1})
        self._deferred_since_log += 1
        if now - self._logged_at >= LOG_EVERY:
            log.error(
                "store: %s: %d index batch(es) went back to their queue to wait (free space under the store, or "
                "lower LOOKALIKE_STORE_MIN_FREE_BYTES); indexing resumes by itself",
                full,
                self._deferred_since_log,
            )
            self._logged_at = now
            self._deferred_since_log = 0
        return full

    def wait_for_room(self, seconds: float, poll: float = 0.5) -> bool:
        """Up to ``seconds`` for the space to come back (True when it did)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(poll)
            if self.reading() is None:
                return True
        return False
