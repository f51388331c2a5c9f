"""Request ids, access log lines and Prometheus metrics for the HTTP API, as one pure ASGI middleware.

A request id comes in as ``X-Request-ID`` (kept when it is a sane token) or is made up, and goes back out in
the same header and in every error body. It lives in a context variable that a log record factory copies onto
every log record (``record.request_id``), so every line logged while the request is handled - by the API, by
the backend in its worker thread, by a library - carries it, whatever handler formats it.

Metrics are labelled by the route *template* (``/v1/products/{product_id}/similar``), never the raw path, so
a crawler cannot grow the series without bound; anything that matched no route counts as ``unmatched``.
Each app has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("lookalike.api")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,128}")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("lookalike_request_id", default="-")

# The format `lookalike serve` gives uvicorn's and lookalike's loggers: the request id on every line.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s"

_factory_installed = False


def install_log_record_factory() -> None:
    """Stamp ``request_id`` on every log record (``-`` outside a request). Idempotent."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id_var.get()
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """A ``log_config`` for uvicorn.run: one format with the request id; uvicorn's own access log is off
    because the API writes its own (with the route template, the status and the request id)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # One record, one line: control characters escaped (lookalike.worker.logs.OneLineFormatter).
        "formatters": {"default": {"()": "lookalike.worker.logs.OneLineFormatter", "format": LOG_FORMAT}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "lookalike": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _REQUEST_ID_OK.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class ApiMetrics:
    """Request counts and latency by route template, method and status, in the app's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lookalike_api_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lookalike_api_request_seconds",
            "Seconds from request to the end of the response, by route template, method and status.",
            ["route", "method", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )


def route_template(scope: Scope) -> str:
    """The template of the route that handled the request; ``unmatched`` if none did."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObserveMiddleware:
    """Outermost middleware: sets the request id, echoes it, logs one access line and records the metrics."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # A request answered by nobody because its client left (lookalike.api.limits) counts as 499.
            status = scope["state"].get("answered_status", status)
            seconds = time.perf_counter() - started
            route = route_template(scope)
            labels = (route, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(seconds)
            log.info(
                "request method=%s route=%s status=%d ms=%.1f", scope["method"], route, status, seconds * 1000
            )
            request_id_var.reset(token)
