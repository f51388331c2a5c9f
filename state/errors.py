"""One rejection type for everything lookalike refuses: a download, an image, an event, a query.

A rejection carries a short stable ``reason`` token (counted in metrics, shown in ``failures``, returned by the
API), a human ``detail``, and the ``stage`` that refused. Subclasses only narrow the stage or add what a caller
needs to decide on a retry; they never re-declare the fields.
"""

from __future__ import annotations

from typing import Any

# Stage names, as recorded in the failure log, the ledger and job outcome log lines.
FETCH = "fetch"
DECODE = "decode"
EMBED = "embed"
INDEX = "index"
QUERY = "query"
EVENT = "event"
TASK = "task"


class Rejected(ValueError):
    """Refused for a reason retrying the same input will not fix (unless ``transient`` says otherwise).

    Its args are exactly (reason, detail), so it survives a JSON round trip through a result backend.
    """

    stage: str = TASK
    transient: bool = False

    def __init__(self, reason: str, detail: str = "", *, stage: str | None = None) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        if stage is not None:
            self.stage = stage

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

    def as_data(self) -> dict[str, Any]:
        """The refusal as a result value: ``{"error": reason, "detail": ...}`` (what the query task returns)."""
        return {"error": self.reason, "detail": self.detail}


class Unavailable(Exception):
    """Something lookalike depends on does not answer now (the broker, the store, the model, the workers):
    the same request may well succeed later, so an API answers 503 with ``Retry-After`` and a command exits 3.

    Every outage is a subclass, so an adapter maps all of them with one row of its table; a subclass only names
    which dependency is out.
    """

    def __init__(self, detail: str = "", *, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BackendUnavailable(Unavailable):
    """No process can answer a query or a store request right now (no worker on its queue, the broker failed
    while waiting, the store owner reported a store error)."""


class BackendTimeout(Unavailable):
    """The request was sent but no answer came in time (no worker took it, or it is too slow): a 504, not a
    503, to an HTTP client."""


class Overloaded(Unavailable):
    """More searches are in flight than this process admits (``LOOKALIKE_API_MAX_SEARCHES``): refused at once,
    to be retried shortly (a 503 ``overloaded`` with ``Retry-After: 1``), rather than queued until it times out."""

    def __init__(self, detail: str = "", *, retry_after: int = 1) -> None:
        super().__init__(detail, retry_after=retry_after)


class BrokerUnreachable(Unavailable):
    """Nothing answers at the broker URL."""


class BrokerUnavailable(Unavailable):
    """The embedded broker could not be started (its data directory stayed busy)."""


class ModelUnavailable(Unavailable):
    """The embedding model cannot be loaded or run here (offline without a local directory, a missing file,
    an execution provider this machine lacks)."""


class StoreError(RuntimeError):
    """The store refused an operation for a reason retrying will not fix."""


class StoreUnavailable(StoreError, Unavailable):
    """The store cannot be reached right now; retry later."""


class StoreLocked(StoreUnavailable):
    """The embedded store's directory is open in another process. Retried like an unreachable store: a store
    owner being restarted holds it for a moment; a batch that finds it so waits rather than fails."""


class NeedsReindex(StoreError):
    """The collection was built by an earlier release: `lookalike reindex` upgrades it (a query that needs the
    new layout is refused with the reason ``needs_reindex``)."""


class Misconfigured(ValueError):
    """A setting or option the user has to change before the command can run (exit 2, like bad input)."""
