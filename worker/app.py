"""The Celery application: queues, routes and the delivery guarantees lookalike relies on."""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import redis
from celery import Celery
from kombu import Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from lookalike.config.settings import Settings, get_settings
from lookalike.state.brokerfull import as_broker_full, out_of_memory
from lookalike.state.queues import (
    ALL_QUEUES,
    EMBED_QUEUE,
    ENCODE_QUEUE,
    FETCH_QUEUE,
    INDEX_QUEUE,
    QUERY_QUEUE,
    QUEUE_ALIASES,
)
from lookalike.state.tasks import TASK_QUEUES

log = logging.getLogger(__name__)

TASK_ROUTES = {name: {"queue": queue} for name, queue in TASK_QUEUES.items()}


def _is_outage(error: BaseException) -> bool:
    """A connection error that waiting can cure (refused, reset, closed, loading), not a refusal that stays: a
    wrong password or a certificate that does not verify fails at once, as before."""
    if isinstance(error, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
        return False
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return False
        cause = cause.__cause__ or cause.__context__
    return "certificate" not in str(error).lower()


class _OutageRetry(Retry):
    """redis-py's retry, for outages only (see :func:`_is_outage`)."""

    def call_with_retry(
        self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
    ) -> Any:
        def retryable(error: Exception) -> bool:
            return _is_outage(error) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


# How long a command on the broker's connections (an acknowledgement, above all) keeps retrying while Redis is
# away: a restart, an AOF reload, a fail-over. Backoff 0.1 s doubling to 2 s, 34 retries: about a minute.
BROKER_COMMAND_RETRY = _OutageRetry(ExponentialBackoff(cap=2.0, base=0.1), 34)


class _PatientQoS(kombu_redis.QoS):
    """kombu's record of delivered, unacknowledged messages, written again while the broker is out of memory.

    kombu pops a message off its queue (BRPOP frees memory, so Redis allows it at maxmemory) and then records it
    as unacknowledged (ZADD + HSET, which Redis refuses at maxmemory). Refused, the popped message would exist
    only in this process, and the error would stop the consumer. The pop just freed about as much memory as the
    record needs, so the write is retried, with backoff, for up to a minute, before giving up as before.
    """

    said_at: ClassVar[list[float]] = [0.0]  # when this process last said so: once a minute, not per message

    def ack(self, delivery_tag: Any) -> None:
        # A message of a queue consumed without acknowledgements (the shoppers' queries, see NO_ACK_QUEUES) was
        # never recorded: nothing to remove from Redis, and nothing to count against the prefetch limit.
        if delivery_tag in self._delivered:
            super().ack(delivery_tag)

    def append(self, message: Any, delivery_tag: Any) -> Any:
        delay, deadline = 0.05, time.monotonic() + 60.0
        while True:
            try:
                return super().append(message, delivery_tag)
            except redis.exceptions.ResponseError as exc:
                if not out_of_memory(exc) or time.monotonic() > deadline:
                    raise
                if time.monotonic() - self.said_at[0] >= 60.0:
                    self.said_at[0] = time.monotonic()
                    with self.channel.conn_or_acquire() as client:
                        full = as_broker_full(exc, client)
                    log.error("%s: a delivered message waits until it can be recorded as unacknowledged", full)
                time.sleep(delay)
                delay = min(2.0, delay * 2)


class _RetryingChannel(kombu_redis.Channel):
    """kombu's Redis channel whose connections retry a command through a short Redis outage.

    Without this a worker can stop consuming for good after Redis restarts. A task that finishes while Redis is
    down cannot be acknowledged; Celery logs "Couldn't ack" and carries on, but kombu keeps the message in its
    in-memory count of unacknowledged deliveries. At prefetch 1 (the embed and store workers) that count stays
    at the limit, so the channel never sends another BRPOP; and as no BRPOP is pending, no socket tells the
    event loop that the connection was lost, so Celery never reconnects with a fresh channel either. The job
    itself is safe (it is in Redis's unacked hash and goes back to its queue after the visibility timeout), but
    nothing consumes that queue any more. With the acknowledgement retried until Redis answers again, the count
    drops, the next BRPOP finds the dead socket and Celery reconnects as usual. BRPOP itself is read without
    retries, so a lost connection is still noticed at once.
    """

    QoS = _PatientQoS
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One client over the channel's (synchronous) connection pool, not a new one for every command.

        kombu builds a ``redis.Redis`` for each acknowledgement, delivery record, publish and event (redis-py 8
        builds its response-callback table in every constructor: ~0.1 ms of CPU each, several per message). A
        client holds no connection of its own and is safe to share between threads (every command takes a
        connection from the pool); a new pool (after a reconnect) gets a new client."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        params["retry"] = BROKER_COMMAND_RETRY
        # Not timeouts: a write that timed out may have been applied, and replaying it would duplicate it.
        params["retry_on_error"] = [redis.exceptions.ConnectionError]
        return params


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport (redis:// and rediss://) with :class:`_RetryingChannel`."""

    Channel = _RetryingChannel


# redis:// and rediss:// URLs get this transport wherever Celery opens a broker connection (workers, producer,
# Flower's app): the URL's scheme keeps naming the transport (and rediss:// still means TLS), as before.
for _scheme in ("redis", "rediss"):
    TRANSPORT_ALIASES[_scheme] = f"{__name__}:RedisTransport"


# The shoppers' queries are consumed without acknowledgements: kombu records every other delivered message as
# unacknowledged in Redis and removes the record once acknowledged (two transactions a message), so that a dead
# worker's job comes back after the visibility timeout. A query's tasks are acknowledged as they start anyway
# (``acks_late=False``) and expire with the API's wait, so a redelivered query would find nobody waiting; the two
# round trips were a tenth of an encode step's CPU outside the model (measured with py-spy).
NO_ACK_QUEUES = frozenset({ENCODE_QUEUE, QUERY_QUEUE})


def _tls_options(url: str) -> dict[str, Any] | None:
    """rediss:// without ssl_cert_reqs in the URL: verify certificates (Celery insists on an explicit choice)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.broker_url.get_secret_value()
    transport = {
        # A job of a dead worker goes back to the queue after this long; every task (a download has a 30 s
        # deadline, a batch is 16 images, a retry waits at most 60 s) is far shorter, so a job still running
        # is never handed out twice.
        "visibility_timeout": settings.visibility_timeout,
        # Sweep for such jobs every tenth of the timeout (kombu's default sweep is every 100 s), so they run
        # again within visibility_timeout * 1.1: 264 s with the defaults, inside five minutes.
        "unacked_restore_interval": max(1, settings.visibility_timeout // 10),
        "unacked_restore_throttle": 1,
        # A worker consuming several queues pops them in the order it was given (BRPOP takes the first non-empty
        # key), not round robin: the store owner consumes lookalike.query before lookalike.index, so a waiting
        # query is taken before the next index batch (see lookalike.worker.runner).
        "queue_order_strategy": "priority",
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "health_check_interval": 15,
        # How long an idle consumer's BRPOP blocks (kombu's default: 1 s). A message still wakes it at once;
        # this bounds how long a stopping worker waits for its last BRPOP to return (1.1 -> 0.35 s for the store
        # owner and the fetch pool, measured), for five idle BRPOPs a second per pool.
        "polling_interval": 0.2,
    }
    config: dict[str, Any] = {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"socket_connect_timeout": 5, "retry_policy": {"timeout": 10.0}},
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle payload from anyone who can write to Redis would be code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Acknowledge after the work is done, and put the job back if the worker process dies mid-task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_expires": settings.query_result_ttl,
        "task_time_limit": settings.task_time_limit,
        "task_routes": TASK_ROUTES,
        "task_default_queue": FETCH_QUEUE,
        "task_queues": [Queue(name, no_ack=name in NO_ACK_QUEUES) for name in ALL_QUEUES],
        "task_create_missing_queues": False,
        # Flower (and `lookalike status`) see every stage.
        "worker_send_task_events": settings.task_events,
        # Not the producer's "sent" events: one more Redis write per job for a state Flower can do without
        # (it sees each task received, started and finished); 30,000 jobs enqueue in ~11 s instead of ~17 s.
        "task_send_sent_event": False,
        # No remote control unless asked for: through it, anyone who can write to the broker could shut workers
        # down or resize their pools. Which workers are alive is read from lookalike.state.presence instead.
        "worker_enable_remote_control": settings.remote_control,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # Tasks running when Redis goes away finish; their messages stay unacknowledged in Redis and come back
        # after the visibility timeout (cancelling them is not possible in the thread pool anyway).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }
    tls = _tls_options(url)
    if tls:
        config["broker_use_ssl"] = tls
        config["redis_backend_use_ssl"] = tls
    return config


def create_app(settings: Settings | None = None) -> Celery:
    """The app, configured lazily: the settings are read when Celery first needs its configuration (sending a
    task, starting a worker), not at import. So a command may settle its broker first (start an embedded one,
    say) and import this module in any order."""
    celery = Celery("lookalike", include=["lookalike.worker.tasks"])
    celery.add_defaults(lambda: celery_config(settings or get_settings()))
    return celery


app = create_app()

__all__ = [
    "ALL_QUEUES",
    "EMBED_QUEUE",
    "FETCH_QUEUE",
    "INDEX_QUEUE",
    "QUERY_QUEUE",
    "QUEUE_ALIASES",
    "app",
    "create_app",
]
