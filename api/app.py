"""The HTTP API and the page: FastAPI routes over a :class:`~lookalike.api.backend.SearchBackend`.

``create_app(backend, settings)`` builds everything; ``lookalike serve`` only picks the backend and runs
uvicorn. Routes:

- ``POST /v1/search``: a photo as multipart (``image`` plus form fields) or JSON (``image_url`` or
  ``text``), answered with ``SearchResponse.to_data()`` plus ``took_ms``;
- ``GET /v1/products/{product_id}/similar``: "more like this";
- ``GET /healthz`` (the process is up), ``GET /readyz`` (broker, store and a query worker answer);
- ``GET /metrics`` (Prometheus), ``GET /openapi.json``, ``GET /docs`` (Swagger UI from files shipped in
  fastapi-offline: no CDN, works offline), ``GET /`` (the page, from this package).

Every error has one body (:mod:`lookalike.api.errors`); bad input is always a 4xx with a reason token.
"""

from __future__ import annotations

import hmac
import logging
import time
from importlib import resources
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike import __version__
from lookalike.api.backend import READINESS_CHECKS, SearchBackend
from lookalike.api.docs import DOCS_HEADERS, DocsHeadersMiddleware
from lookalike.api.errors import ERROR_STATUS, ApiError, api_error, error_response, reason_for_validation
from lookalike.api.limits import BodyLimitMiddleware
from lookalike.api.models import ErrorOut, HealthOut, ReadyOut, SearchForm, SearchJSON, SearchOut
from lookalike.api.observe import ApiMetrics, ObserveMiddleware, install_log_record_factory
from lookalike.api.readiness import ReadinessMonitor
from lookalike.config.settings import Settings, get_settings
from lookalike.state.errors import Overloaded
from lookalike.state.search import MAX_K, MAX_OFFSET, Filters, SearchRequest

log = logging.getLogger("lookalike.api")

API_KEY_HEADER = "X-API-Key"
# How much longer than the backend's own wait (LOOKALIKE_QUERY_TIMEOUT) the API waits before answering 504 by
# itself: the backend should always answer first; this only bounds a backend that hangs.
DEADLINE_MARGIN = 2.0
# /readyz waits at most this long for the very first reading (later ones are always there, see api/readiness.py).
FIRST_READING_WAIT = 2.0
# How long a refused search's body is read and thrown away, so the client reads its 503 instead of a reset.
DRAIN_SECONDS = 2.0
UNAVAILABLE_RETRY_AFTER = 5

# The page: a Content-Security-Policy that allows the page's own files and the catalogue's images only.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src http: https: data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
STATIC_FILES = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}


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


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "No or a wrong X-API-Key (only when LOOKALIKE_API_KEYS is set).",
        404: "Unknown product id.",
        413: "The request body is over LOOKALIKE_MAX_UPLOAD_BYTES.",
        415: "Neither JSON nor multipart/form-data.",
        422: "Missing, contradictory or invalid fields; not an image; a refused image URL.",
        503: "The broker or the store does not answer (see Retry-After).",
        504: "No answer in time.",
    }
    return {status: {"model": ErrorOut, "description": described[status]} for status in statuses}


def _static(name: str) -> bytes:
    return resources.files("lookalike.api").joinpath("static", name).read_bytes()


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place, to embed in a hand-written request body."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A form schema without ``null`` alternatives: a multipart field cannot be null, only absent."""
    for prop in schema.get("properties", {}).values():
        branches = [branch for branch in prop.pop("anyOf", []) if branch.get("type") != "null"]
        if len(branches) == 1:
            prop.update(branches[0])
        elif branches:
            prop["anyOf"] = branches
        if prop.get("default", ...) is None:
            del prop["default"]
    return schema


def create_app(backend: SearchBackend, settings: Settings | None = None) -> FastAPI:
    """The whole HTTP side over ``backend``; nothing here talks to Redis, Celery or the store directly."""
    settings = settings or get_settings()
    install_log_record_factory()
    metrics = ApiMetrics()
    keys = tuple(key.encode() for key in settings.api_key_values)
    deadline = settings.query_timeout + DEADLINE_MARGIN
    # Searches wait for the backend on threads of their own (as many as it admits), never on anyio's shared
    # limiter; /healthz uses no thread and /readyz answers from a reading taken in the background.
    search_threads = anyio.CapacityLimiter(settings.effective_api_max_searches)
    readiness = ReadinessMonitor(backend.readiness, READINESS_CHECKS)

    app = FastAPIOffline(
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

    # ----------------------------------------------------------------------------------------- errors
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

    # ----------------------------------------------------------------------------------------- auth
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(RequireKey(keys))] if keys else [])
    auth_errors = (401,) if keys else ()

    # ----------------------------------------------------------------------------------------- search
    async def answer(search: SearchRequest) -> JSONResponse:
        """The backend's answer (it validates the request; its refusals and outages are answered through
        ERROR_STATUS), with the time it took."""
        log.info("search %s", search.describe())
        started = time.perf_counter()
        try:
            with anyio.fail_after(deadline):
                data = await anyio.to_thread.run_sync(
                    backend.search, search, abandon_on_cancel=True, limiter=search_threads
                )
        except TimeoutError as exc:
            raise ApiError(504, "timeout", f"no answer within {deadline:g} s") from exc
        data["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return JSONResponse(data)

    form_schema = _without_null(SearchForm.model_json_schema())
    json_schema = _inline_refs(SearchJSON.model_json_schema())

    @v1.post(
        "/search",
        summary="Search by photo (multipart), image URL or words (JSON)",
        response_model=SearchOut,
        responses=_errors(*auth_errors, 413, 415, 422, 503, 504),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": form_schema, "encoding": {"image": {"contentType": "image/*"}}},
                    "application/json": {"schema": json_schema},
                },
            }
        },
    )
    async def search(request: Request) -> JSONResponse:
        """A photo as multipart/form-data (``image`` plus the options as fields), or JSON with ``image_url``
        or ``text``. The answer lists products best first, one entry per product."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in ("application/json", "multipart/form-data"):
            raise ApiError(
                415, "unsupported_media_type", "send JSON (image_url or text) or multipart/form-data (image)"
            )
        try:
            with backend.admit():  # before the body is read: a refused upload is never held in memory
                if media_type == "application/json":
                    return await answer(await _json_request(request))
                return await answer(await _form_request(request))
        except Overloaded:
            await _drain(request)
            raise

    async def _drain(request: Request) -> None:
        """Read and drop what is left of a refused request's body (for a short while), so the client, still
        sending, gets to read the 503 rather than a reset connection."""
        with anyio.move_on_after(DRAIN_SECONDS):
            async for _chunk in request.stream():
                pass

    async def _json_request(request: Request) -> SearchRequest:
        try:
            body = SearchJSON.model_validate_json(await request.body())
        except ValidationError as exc:
            reason, detail = reason_for_validation(exc.errors())
            raise ApiError(422, reason, detail) from exc
        filters = Filters(**body.filters.model_dump()) if body.filters else Filters()
        return SearchRequest(
            image_url=body.image_url, text=body.text, k=body.k, offset=body.offset, mode=body.mode,
            filters=filters, diverse=body.diverse, facets=body.facets,
        )

    async def _form_request(request: Request) -> SearchRequest:
        try:
            form = await request.form(max_files=1, max_fields=len(SearchForm.model_fields))
        except StarletteHTTPException as exc:
            raise ApiError(422, "bad_multipart", str(exc.detail)) from exc
        try:
            fields: dict[str, Any] = {}
            for name, value in form.multi_items():
                if name in fields:
                    raise ApiError(422, "bad_query", f"{name}: given more than once")
                if isinstance(value, UploadFile):
                    if name != "image":
                        raise ApiError(422, "bad_query", f"{name}: only the image is a file")
                    fields[name] = await _reduced(value)
                elif name == "image":
                    raise ApiError(422, "bad_image_field", "image: send the photo as a file part")
                else:
                    fields[name] = value
        finally:
            await form.close()
        if "image" not in fields:
            raise ApiError(422, "bad_query", "image: a multipart search needs the photo as its image part")
        try:
            body = SearchForm.model_validate(fields)
        except ValidationError as exc:
            reason, detail = reason_for_validation(exc.errors())
            raise ApiError(422, reason, detail) from exc
        return SearchRequest(
            image=body.image, k=body.k, offset=body.offset, mode=body.mode, diverse=body.diverse,
            facets=body.facets, prepared=True,
            filters=Filters(body.category, body.min_price, body.max_price, body.min_score),
        )

    async def _reduced(upload: UploadFile) -> bytes:
        """The uploaded photo as the model's input (the 224x224 transport JPEG), made by the backend here, a
        few at a time, straight from its spool file: the full-size photo is in memory only while it is decoded,
        and never crosses Redis (lookalike.worker.prepare). A refusal is the decoder's own reason."""
        return await anyio.to_thread.run_sync(backend.reduce_upload, upload.file, limiter=search_threads)

    @v1.get(
        "/products/{product_id}/similar",
        summary="More like this product",
        response_model=SearchOut,
        responses=_errors(*auth_errors, 404, 422, 503, 504),
    )
    async def similar(
        product_id: Annotated[str, Path(min_length=1, max_length=200)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        category: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
        min_price: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        max_price: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        min_score: Annotated[float | None, Query(ge=-1, le=1, allow_inf_nan=False)] = None,
    ) -> JSONResponse:
        """The products that look most like ``product_id`` (which itself is left out), best first."""
        with backend.admit():
            return await answer(
                SearchRequest(
                    product_id=product_id, k=k, offset=offset,
                    filters=Filters(category, min_price, max_price, min_score),
                )
            )

    app.include_router(v1)

    # ----------------------------------------------------------------------------------------- operations
    readiness_thread = anyio.CapacityLimiter(1)

    @app.get("/healthz", response_model=HealthOut, summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
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
        missing = [name for name, ok in checks.items() if not ok]
        if missing:
            return error_response(
                request.scope, 503, "not_ready", f"not answering: {', '.join(missing)}",
                {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}, checks=checks,
            )
        return JSONResponse({"status": "ready", "checks": checks})

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics of the API",
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ----------------------------------------------------------------------------------------- the page
    page = _static("index.html")

    @app.get(
        "/",
        response_class=HTMLResponse,
        summary="The search page",
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
    )
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    static = {name: _static(name) for name in STATIC_FILES}

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:
            raise ApiError(404, "not_found", f"no file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    # ----------------------------------------------------------------------------------------- middleware
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
    app.state.metrics = metrics
    app.state.readiness = readiness
    app.state.backend = backend
    app.state.settings = settings
    return app
