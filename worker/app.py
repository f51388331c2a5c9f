"""The Celery application: queues, routes and the delivery guarantees lookalike relies on."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from kombu import Queue

from lookalike.config.settings import Settings, get_settings
from lookalike.state.queues import (
    ALL_QUEUES,
    EMBED_QUEUE,
    ENCODE_QUEUE,
    FETCH_QUEUE,
    INDEX_QUEUE,
    QUERY_QUEUE,
    QUEUE_ALIASES,
)

TASK_ROUTES = {
    "lookalike.fetch": {"queue": FETCH_QUEUE},
    "lookalike.embed": {"queue": EMBED_QUEUE},
    "lookalike.index": {"queue": INDEX_QUEUE},
    "lookalike.reconcile": {"queue": INDEX_QUEUE},
    "lookalike.optimize": {"queue": INDEX_QUEUE},
    "lookalike.audit": {"queue": INDEX_QUEUE},
    "lookalike.reindex": {"queue": INDEX_QUEUE},
    "lookalike.search": {"queue": QUERY_QUEUE},
    "lookalike.encode": {"queue": ENCODE_QUEUE},
}


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
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "health_check_interval": 15,
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
        "task_queues": [Queue(name) for name in ALL_QUEUES],
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
