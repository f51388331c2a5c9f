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

from contextlib import AbstractContextManager
from typing import Any, BinaryIO, Protocol, runtime_checkable

from lookalike.state.errors import BackendTimeout, BackendUnavailable, Unavailable
from lookalike.state.search import SearchRequest

__all__ = ["READINESS_CHECKS", "BackendTimeout", "BackendUnavailable", "SearchBackend", "Unavailable"]

# The names readiness() reports on; /readyz is 200 only when all of them are true.
READINESS_CHECKS = ("broker", "store", "query_worker")


@runtime_checkable
class SearchBackend(Protocol):
    """Answers validated search requests, admits them, and reduces uploads; ``search``, ``readiness`` and
    ``reduce_upload`` block, and the API calls them from worker threads."""

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """The answer to ``request`` as data (``SearchResponse.to_data()``), best first; the backend validates
        the request (so a bad field is refused the same way whichever adapter sent it).

        Raises QueryRejected, or an Unavailable (BackendTimeout included), as this module's docstring says.
        """
        ...

    def readiness(self) -> dict[str, bool]:
        """Which dependencies answer now: ``{"broker": ..., "store": ..., "query_worker": ...}``.

        Called by /readyz's background reading (every second), so it must be cheap and bounded in time.
        """
        ...

    def admit(self) -> AbstractContextManager[None]:
        """One search in flight for the duration of the block; raises
        :class:`~lookalike.state.errors.Overloaded` at once when the bound is reached (a 503 ``overloaded``)."""
        ...

    def reduce_upload(self, file: BinaryIO) -> bytes:
        """An uploaded photo, still in its spool file, as the model's input (the 224x224 transport JPEG); a
        photo the decoder refuses is a QueryRejected with its reason. Blocks; called from a worker thread."""
        ...
