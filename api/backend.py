"""What the HTTP layer needs from the search side, and nothing more.

The API never embeds, opens the store or talks to Celery itself: it turns HTTP into a
:class:`~lookalike.state.search.SearchRequest`, hands it to a :class:`SearchBackend`, and turns the answer (or
the refusal) back into HTTP. The real backend is the application's gateway (:class:`lookalike.app.gateway.
Gateway`: a query worker through the broker, or this process when no worker runs), the one `lookalike search`
uses too; it and the tests' fake one are interchangeable, and ``lookalike serve`` only wires a backend and
runs uvicorn.

How a backend reports trouble decides the status code:

- :class:`~lookalike.state.search.QueryRejected`: the query cannot be answered as asked (4xx, its reason is
  returned as is; ``unknown_product`` is a 404, ``too_large`` a 413, every other reason a 422);
- :class:`~lookalike.state.errors.Unavailable` (any outage: :class:`BackendUnavailable`, the broker, the
  store, the model): nothing can answer now (503 with ``Retry-After``);
- :class:`BackendTimeout`, an Unavailable of its own: nobody answered in time (504).

The table from error to status is :data:`lookalike.api.errors.ERROR_STATUS`.

Anything else a backend raises is a bug, answered as a 500 with the request id so the log line can be found.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from lookalike.state.errors import BackendTimeout, BackendUnavailable, Unavailable
from lookalike.state.search import SearchRequest

__all__ = ["READINESS_CHECKS", "BackendTimeout", "BackendUnavailable", "SearchBackend", "Unavailable"]

# The names readiness() reports on; /readyz is 200 only when all of them are true.
READINESS_CHECKS = ("broker", "store", "query_worker")


@runtime_checkable
class SearchBackend(Protocol):
    """Answers search requests (validating them first). Both methods block; the API calls them from a worker
    thread."""

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """The answer to ``request`` as data (``SearchResponse.to_data()``), best first; the backend validates
        the request (so a bad field is refused the same way whichever adapter sent it).

        Raises QueryRejected, or an Unavailable (BackendTimeout included), as this module's docstring says.
        """
        ...

    def readiness(self) -> dict[str, bool]:
        """Which dependencies answer now: ``{"broker": ..., "store": ..., "query_worker": ...}``.

        Called by /readyz (a load balancer polls it), so it must be cheap and bounded in time.
        """
        ...
