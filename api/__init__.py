"""The HTTP API and the search page, over a search backend (``create_app(backend, settings)``).

``lookalike serve`` wires the real backend (the application's gateway: a query worker through the broker)
and runs uvicorn; tests wire a fake one. Nothing in this package embeds, opens the store or talks to Celery.
"""

from lookalike.api.app import create_app
from lookalike.api.backend import BackendTimeout, BackendUnavailable, SearchBackend
from lookalike.api.observe import LOG_FORMAT, uvicorn_log_config

__all__ = [
    "LOG_FORMAT",
    "BackendTimeout",
    "BackendUnavailable",
    "SearchBackend",
    "create_app",
    "uvicorn_log_config",
]
