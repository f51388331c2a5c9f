"""The light context: what the producer, the CLI and the API need, and nothing heavy.

Settings, the Redis client, the run ledger, the product registry, the failure log and the duplicate book. The
worker's context (:class:`lookalike.worker.pipeline.WorkerContext`) extends it with the HTTP session, the
embedder, the store and the embedding cache; commands that only read or write Redis never build those.
"""

from __future__ import annotations

from lookalike.config.settings import Settings, get_settings
from lookalike.state.connection import redis_client
from lookalike.state.duplicates import duplicate_book
from lookalike.state.failures import FailureLog
from lookalike.state.ledger import Ledger
from lookalike.state.registry import ProductRegistry


class StateContext:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        settings = self.settings
        self.redis = redis_client(settings)
        self.ledger = Ledger(self.redis, settings.key_prefix, settings.run_ttl)
        self.failures = FailureLog(self.redis, settings.key("failures"), settings.failures_cap)
        self.registry = ProductRegistry(self.redis, settings.key("products", settings.collection))
        self.duplicates = duplicate_book(self.redis, settings.key_prefix, settings.collection)

    def close(self) -> None:
        self.redis.close()


_KEY = "state-context"


def current_state() -> StateContext:
    """This process's light context (see :mod:`lookalike.state.process`)."""
    from lookalike.state.process import process_cache

    return process_cache.get(_KEY, StateContext)


def reset_state() -> None:
    from lookalike.state.process import process_cache

    ctx = process_cache.pop(_KEY)
    if ctx is not None:
        ctx.close()
