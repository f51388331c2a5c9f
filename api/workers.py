"""The real search backend: queries go to the workers through the broker; with no worker at all, this process
answers them itself, like `lookalike search` does.

Through the workers, a query's image is downloaded, decoded and embedded on the embedding processes (the
encode task) and the store owner only searches (see :func:`lookalike.worker.client.ask_workers`), so the API
process never loads the model or opens the store, and shoppers' queries scale with the embedding processes.
Tasks are sent by name: this module imports none of the worker's heavy parts unless it must answer in-process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from lookalike.api.backend import BackendTimeout, BackendUnavailable
from lookalike.config.settings import Settings
from lookalike.state.queues import ENCODE_QUEUE, INDEX_QUEUE, QUERY_QUEUE
from lookalike.state.search import SearchRequest, SearchResponse

log = logging.getLogger("lookalike.api")


class WorkerBackend:
    def __init__(self, settings: Settings) -> None:
        from lookalike.worker.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self._in_process_lock = threading.Lock()
        self._said_in_process = False
        self._consumed_cache: tuple[float, set[str] | None] = (0.0, None)

    # ----------------------------------------------------------------------------------------------- helpers
    def _broker_answers(self) -> bool:
        from lookalike.worker.embedded import redis_answers

        return redis_answers(self.settings.broker_url.get_secret_value(), timeout=0.5)

    def _consumed(self, *, max_age: float = 0.0) -> set[str] | None:
        """Queues the live workers consume (None: no worker at all); a reading up to ``max_age`` seconds old may
        be reused, so a busy API does not scan Redis for every query."""
        import time

        from lookalike.worker.client import live_workers

        read_at, consumed = self._consumed_cache
        if max_age and time.monotonic() - read_at < max_age:
            return consumed
        workers = live_workers(self.app, timeout=1.0)
        consumed = {queue for queues in workers.values() for queue in queues} if workers else None
        self._consumed_cache = (time.monotonic(), consumed)
        return consumed

    # ------------------------------------------------------------------------------------------- protocol
    def readiness(self) -> dict[str, bool]:
        if not self._broker_answers():
            return {"broker": False, "store": False, "query_worker": False}
        consumed = self._consumed() or set()
        return {
            "broker": True,
            "store": QUERY_QUEUE in consumed and INDEX_QUEUE in consumed,
            "query_worker": ENCODE_QUEUE in consumed,
        }

    def conditions(self) -> list[str]:
        """What stops indexing now (the store's disk is full, a pool stopped), as `lookalike status` says it."""
        from lookalike.state.conditions import Conditions
        from lookalike.state.connection import redis_client

        client = redis_client(self.settings)
        try:
            return [str(c["message"]) for c in Conditions(client, self.settings.key_prefix).active()]
        finally:
            client.close()

    def search(self, request: SearchRequest) -> SearchResponse:
        import kombu.exceptions
        import redis
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            consumed = self._consumed(max_age=1.0)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"no broker answers (LOOKALIKE_BROKER_URL): {exc}") from exc
        if consumed is None:
            return self._in_process(request)
        if QUERY_QUEUE not in consumed:
            raise BackendUnavailable("no running worker consumes lookalike.query (the store owner)")
        if request.needs_vector and ENCODE_QUEUE not in consumed:
            raise BackendUnavailable("no running worker consumes lookalike.encode (the embedding processes)")
        from lookalike.worker.client import ask_workers

        try:
            answer: dict[str, Any] = ask_workers(self.app, request, timeout=self.settings.query_timeout)
        except CeleryTimeout as exc:
            raise BackendTimeout(f"no worker answered within {self.settings.query_timeout:g}s") from exc
        except (redis.RedisError, kombu.exceptions.OperationalError, ConnectionError) as exc:
            raise BackendUnavailable(f"the broker failed: {exc}") from exc
        if answer.get("error") == "store_error":
            raise BackendUnavailable(str(answer.get("detail") or "the store failed"))
        return SearchResponse.from_data(answer)

    def _in_process(self, request: SearchRequest) -> SearchResponse:
        """No worker at all: this process loads the model and opens the store itself, one query at a time."""
        from lookalike.worker import pipeline
        from lookalike.worker.embed import ModelUnavailable
        from lookalike.worker.store import StoreError

        if not self._said_in_process:
            log.warning("no worker is running: answering queries in this process (start `lookalike worker`)")
            self._said_in_process = True
        with self._in_process_lock:
            try:
                return pipeline.answer_query(pipeline.current_context(), request)
            except (StoreError, ModelUnavailable) as exc:
                raise BackendUnavailable(str(exc)) from exc
            finally:
                # Let a worker that starts later take the store over.
                pipeline.reset_context()
