"""The HTTP API and the page: FastAPI routes over a :class:`~lookalike.api.backend.SearchBackend`.

``create_app(backend, settings)`` puts the parts together; ``lookalike serve`` only picks the backend (the
application's gateway) and runs uvicorn. Routes:

- ``POST /v1/search``: a photo as multipart (``image`` plus form fields) or JSON (``image_url`` or
  ``text``), answered with ``SearchResponse.to_data()`` plus ``took_ms``; and
  ``GET /v1/products/{product_id}/similar``: "more like this" (both in :mod:`lookalike.api.search`);
- ``GET /v1/duplicates``, ``POST /v1/duplicates/decisions``: duplicate listings (:mod:`lookalike.api.duplicates`);
- ``GET /healthz`` (the process is up), ``GET /readyz`` (broker, store and a query worker answer),
  ``GET /metrics`` (Prometheus) (:func:`operations_router`);
- ``GET /openapi.json``, ``GET /docs`` (Swagger UI from files shipped in fastapi-offline: no CDN, works
  offline), ``GET /`` (the page, :mod:`lookalike.api.page`).

Every error has one body (:mod:`lookalike.api.errors`); bad input is always a 4xx with a reason token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike import __version__
from lookalike.api.backend import READINESS_CHECKS, SearchBackend
from lookalike.api.docs import DOCS_HEADERS, DocsHeadersMiddleware
from lookalike.api.duplicates import DuplicateDesk, duplicates_router
from lookalike.api.errors import ERROR_STATUS, ApiError, api_error, error_response, reason_for_validation
from lookalike.api.limits import BodyLimitMiddleware
from lookalike.api.models import ErrorOut, HealthOut, ReadyOut
from lookalike.api.observe import ApiMetrics, ObserveMiddleware, install_log_record_factory
from lookalike.api.page import page_router
from lookalike.api.readiness import ReadinessMonitor
from lookalike.api.search import SearchRoutes
from lookalike.config.settings import Settings, get_settings

log = logging.getLogger("lookalike.api")

API_KEY_HEADER = "X-API-Key"
# /readyz waits at most this long for the very first reading (later ones are always there, see api/readiness.py).
FIRST_READING_WAIT = 2.0
UNAVAILABLE_RETRY_AFTER = 5

_API_KEY_SCHEME = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="One of LOOKALIKE_API_KEYS (when it is set)."
)


class RequireKey:
    """The /v1/ dependency when API keys are set: 401 without one of them in X-API-Key."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys

    async def __call__(self, given: Annotated[str | None, Security(_API_KEY_SCHEME)]) -> None:
        if given is None:
            raise ApiError(401, "missing_api_key", f"send one of the API keys in the {API_KEY_HEADER} header")
        # Compare against every key, each in constant time, so timing tells nothing about which one is close.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key)
        if not matched:
            raise ApiError(401, "bad_api_key", f"the {API_KEY_HEADER} header holds no valid API key")


def create_app(
    backend: SearchBackend, settings: Settings | None = None, duplicates: DuplicateDesk | None = None
) -> FastAPI:
    """The whole HTTP side over ``backend`` (and the duplicate report over ``duplicates``, by default from
    Redis); nothing here talks to Redis, Celery or the store directly."""
    settings = settings or get_settings()
    install_log_record_factory()
    metrics = ApiMetrics()
    keys = tuple(key.encode() for key in settings.api_key_values)
    # /readyz answers from a reading taken in the background (see api/readiness.py), with the conditions that
    # stop indexing but not searching read beside it.
    conditions = ConditionsReading(backend)
    readiness = ReadinessMonitor(conditions.readiness, READINESS_CHECKS)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The reading thread lives as long as the app serves: a stopped app (a test's client, uvicorn shutting
        # down) must not go on asking a broker every second.
        yield
        readiness.stop()

    app = FastAPIOffline(
        lifespan=lifespan,
        title="lookalike",
        version=__version__,
        description="Reverse image search over a product catalogue: send a photo, an image URL or words; get the "
        "catalogue's products that look like it, best first. Errors are always "
        '`{"error": reason, "detail": text, "request_id": id}`.',
        redoc_url=None,
        static_url="/docs-static",
    )
    # No redirect to the path with(out) a trailing slash: Starlette builds it from the Host header, which any
    # client sets. /v1/search/ is a 404 like any other unknown path.
    app.router.redirect_slashes = False
    _answer_errors(app)
    dependencies = [Depends(RequireKey(keys))] if keys else []
    auth_errors = (401,) if keys else ()
    app.include_router(SearchRoutes(backend, settings).router(dependencies, auth_errors=auth_errors))
    desk = duplicates or DuplicateDesk(settings)
    app.include_router(duplicates_router(desk, auth_errors=auth_errors), prefix="/v1", dependencies=dependencies)
    app.include_router(operations_router(readiness, conditions, metrics))
    app.include_router(page_router())
    _add_middleware(app, settings, metrics)
    app.state.metrics = metrics
    app.state.readiness = readiness
    app.state.backend = backend
    app.state.settings = settings
    return app


def _answer_errors(app: FastAPI) -> None:
    """Every error, whatever raised it, answered with the one body (:mod:`lookalike.api.errors`)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.scope, exc.status, exc.reason, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        reason, detail = reason_for_validation(exc.errors())
        return error_response(request.scope, 422, reason, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(request.scope, exc.status_code, reason, str(exc.detail), dict(exc.headers or {}))

    async def _known_error(request: Request, exc: Exception) -> JSONResponse:
        mapped = api_error(exc)
        assert mapped is not None  # registered for the table's types only
        return error_response(request.scope, mapped.status, mapped.reason, mapped.detail, mapped.headers)

    for known in ERROR_STATUS:
        app.add_exception_handler(known, _known_error)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.scope, 500, "internal_error", "unexpected error; the log has the request id")


class ConditionsReading:
    """The backend's readiness, and with each reading the conditions that stop indexing but not searching (the
    store's disk is full, a pool stopped, the broker is full): /readyz names them for the operator without
    taking the API out of a load balancer."""

    def __init__(self, backend: SearchBackend) -> None:
        self.backend = backend
        self.latest: list[str] = []

    def readiness(self) -> dict[str, bool]:
        checks = self.backend.readiness()
        conditions = getattr(self.backend, "conditions", None)
        try:
            self.latest = list(conditions()) if conditions is not None else []
        except Exception as exc:  # the conditions are a detail of the reading, never its failure
            log.warning("reading the conditions failed: %r", exc)
        return checks


def operations_router(readiness: ReadinessMonitor, conditions: ConditionsReading, metrics: ApiMetrics) -> APIRouter:
    """``/healthz`` (the process is up), ``/readyz`` (what the backend needs answers), ``/metrics``."""
    router = APIRouter()
    readiness_thread = anyio.CapacityLimiter(1)

    @router.get("/healthz", response_model=HealthOut, summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=ReadyOut,
        summary="Broker, store and a query worker answer",
        responses={503: {"model": ErrorOut, "description": "Something is missing; the detail names it."}},
    )
    async def readyz(request: Request) -> JSONResponse:
        checks, age = readiness.reading()
        if age is None:  # the very first probe: wait for the first reading, on a thread of its own
            await anyio.to_thread.run_sync(readiness.wait_first, FIRST_READING_WAIT, limiter=readiness_thread)
            checks, age = readiness.reading()
        latest = list(conditions.latest)
        named = {"conditions": latest} if latest else {}
        missing = [name for name, ok in checks.items() if not ok]
        if missing:
            detail = f"not answering: {', '.join(missing)}" + "".join(f"; {line}" for line in latest)
            return error_response(
                request.scope, 503, "not_ready", detail,
                {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}, checks=checks, **named,
            )
        return JSONResponse({"status": "ready", "checks": checks, **named})

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics of the API",
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _add_middleware(app: FastAPI, settings: Settings, metrics: ApiMetrics) -> None:
    # Added innermost first: the body limit sits inside CORS (so a 413 still carries CORS headers), and the
    # request id / metrics / access log wrap everything.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        read_timeout=settings.api_read_timeout,
        body_timeout=settings.api_body_timeout,
    )
    origins = settings.cors_origin_list
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", API_KEY_HEADER, "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(DocsHeadersMiddleware, headers=DOCS_HEADERS)
    app.add_middleware(ObserveMiddleware, metrics=metrics)
