"""What the HTTP layer needs from the search side, and nothing more.

The API never embeds, opens the store or talks to Celery itself: it turns HTTP into a
:class:`~lookalike.state.search.SearchRequest`, hands it to a :class:`SearchBackend`, and turns the answer (or
the refusal) back into HTTP. So the real backend (a query worker through the broker, with an in-process
fallback) and the tests' fake one are interchangeable, and ``lookalike serve`` only wires a backend and runs
uvicorn.

How a backend reports trouble decides the status code:

- :class:`~lookalike.state.search.QueryRejected`: the query cannot be answered as asked (4xx, its reason is
  returned as is; ``unknown_product`` is a 404, ``too_large`` a 413, every other reason a 422);
- :class:`BackendUnavailable`: the broker or the store does not answer (503 with ``Retry-After``);
- :class:`BackendTimeout`: nobody answered in time (504).

Anything else a backend raises is a bug, answered as a 500 with the request id so the log line can be found.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from lookalike.state.search import SearchRequest, SearchResponse

# The names readiness() reports on; /readyz is 200 only when all of them are true.
READINESS_CHECKS = ("broker", "store", "query_worker")


class BackendUnavailable(Exception):
    """The backend cannot take queries right now (broker unreachable, store closed...): worth retrying later."""

    def __init__(self, detail: str = "", *, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BackendTimeout(Exception):
    """No answer came in time (no query worker took the job, or it is too slow)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


@runtime_checkable
class SearchBackend(Protocol):
    """Answers validated search requests. Both methods block; the API calls them from a worker thread."""

    def search(self, request: SearchRequest) -> SearchResponse:
        """The answer to ``request`` (already validated), best first.

        Raises QueryRejected, BackendUnavailable or BackendTimeout as described in this module's docstring.
        """
        ...

    def readiness(self) -> dict[str, bool]:
        """Which dependencies answer now: ``{"broker": ..., "store": ..., "query_worker": ...}``.

        Called by /readyz (a load balancer polls it), so it must be cheap and bounded in time.
        A backend may also offer ``conditions() -> list[str]``: what stops indexing now, one line each, which
        /readyz names without failing (searches still answer).
        """
        ...
