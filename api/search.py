"""The /v1 routes: ``POST /v1/search`` and ``GET /v1/products/{product_id}/similar``.

Each route only parses HTTP into a :class:`~lookalike.state.search.SearchRequest` (through the bodies in
:mod:`lookalike.api.models`), hands it to the backend, and returns the backend's data with ``took_ms``. The
backend validates the request; its refusals and outages reach the client through ``ERROR_STATUS``
(:mod:`lookalike.api.errors`).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike.api.backend import SearchBackend
from lookalike.api.errors import ApiError, reason_for_validation
from lookalike.api.models import ErrorOut, SearchForm, SearchJSON, SearchOut, SimilarQuery
from lookalike.config.settings import Settings
from lookalike.state.errors import Overloaded
from lookalike.state.search import MAX_PRODUCT_ID_CHARS, SearchRequest

log = logging.getLogger("lookalike.api")

# How much longer than the backend's own wait (LOOKALIKE_QUERY_TIMEOUT) the API waits before answering 504 by
# itself: the backend should always answer first; this only bounds a backend that hangs.
DEADLINE_MARGIN = 2.0
# How long a refused search's body is read and thrown away, so the client reads its 503 instead of a reset.
DRAIN_SECONDS = 2.0

ERROR_DESCRIPTIONS = {
    401: "No or a wrong X-API-Key (only when LOOKALIKE_API_KEYS is set).",
    404: "Unknown product id.",
    413: "The request body is over LOOKALIKE_MAX_UPLOAD_BYTES.",
    415: "Neither JSON nor multipart/form-data.",
    422: "Missing, contradictory or invalid fields; not an image; a refused image URL.",
    503: "The broker or the store does not answer (see Retry-After).",
    504: "No answer in time.",
}


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry for these error statuses (each with the one error body)."""
    return {status: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


class SearchRoutes:
    """The /v1 routes over one backend."""

    def __init__(self, backend: SearchBackend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.deadline = settings.query_timeout + DEADLINE_MARGIN
        # Searches wait for the backend on threads of their own (as many as it admits), never on anyio's shared
        # limiter; /healthz uses no thread and /readyz answers from a reading taken in the background.
        self.threads = anyio.CapacityLimiter(settings.effective_api_max_searches)

    def router(self, dependencies: list[Any], auth_errors: tuple[int, ...]) -> APIRouter:
        v1 = APIRouter(prefix="/v1", dependencies=dependencies)
        form_schema = _without_null(SearchForm.model_json_schema())
        json_schema = _inline_refs(SearchJSON.model_json_schema())
        v1.add_api_route(
            "/search",
            self.search,
            methods=["POST"],
            summary="Search by photo (multipart), image URL or words (JSON)",
            response_model=SearchOut,
            responses=documented_errors(*auth_errors, 413, 415, 422, 503, 504),
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": form_schema,
                            "encoding": {"image": {"contentType": "image/*"}},
                        },
                        "application/json": {"schema": json_schema},
                    },
                }
            },
        )
        v1.add_api_route(
            "/products/{product_id}/similar",
            self.similar,
            methods=["GET"],
            summary="More like this product",
            response_model=SearchOut,
            responses=documented_errors(*auth_errors, 404, 422, 503, 504),
        )
        return v1

    async def answer(self, search: SearchRequest) -> JSONResponse:
        """The backend's answer, with the time it took."""
        log.info("search %s", search.describe())
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.deadline):
                data = await anyio.to_thread.run_sync(
                    self.backend.search, search, abandon_on_cancel=True, limiter=self.threads
                )
        except TimeoutError as exc:
            raise ApiError(504, "timeout", f"no answer within {self.deadline:g} s") from exc
        data["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return JSONResponse(data)

    async def search(self, request: Request) -> JSONResponse:
        """A photo as multipart/form-data (``image`` plus the options as fields), or JSON with ``image_url``
        or ``text``. The answer lists products best first, one entry per product."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in ("application/json", "multipart/form-data"):
            raise ApiError(
                415, "unsupported_media_type", "send JSON (image_url or text) or multipart/form-data (image)"
            )
        try:
            with self.backend.admit():  # before the body is read: a refused upload is never held in memory
                if media_type == "application/json":
                    return await self.answer(await _json_request(request))
                return await self.answer(await self._form_request(request))
        except Overloaded:
            await _drain(request)
            raise

    async def similar(
        self,
        product_id: Annotated[str, Path(min_length=1, max_length=MAX_PRODUCT_ID_CHARS)],
        query: Annotated[SimilarQuery, Query()],
    ) -> JSONResponse:
        """The products that look most like ``product_id`` (which itself is left out), best first."""
        with self.backend.admit():
            return await self.answer(query.request(product_id))

    async def _form_request(self, request: Request) -> SearchRequest:
        """A multipart search: the photo as its one file part, every option once, as text."""
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
                    fields[name] = await self._reduced(value)
                elif name == "image":
                    raise ApiError(422, "bad_image_field", "image: send the photo as a file part")
                else:
                    fields[name] = value
        finally:
            await form.close()
        if "image" not in fields:
            raise ApiError(422, "bad_query", "image: a multipart search needs the photo as its image part")
        try:
            return SearchForm.model_validate(fields).request()
        except ValidationError as exc:
            raise ApiError(422, *reason_for_validation(exc.errors())) from exc

    async def _reduced(self, upload: UploadFile) -> bytes:
        """The uploaded photo as the model's input (the 224x224 transport JPEG), made by the backend here, a
        few at a time, straight from its spool file: the full-size photo is in memory only while it is decoded,
        and never crosses Redis (lookalike.worker.prepare). A refusal is the decoder's own reason."""
        return await anyio.to_thread.run_sync(self.backend.reduce_upload, upload.file, limiter=self.threads)


async def _json_request(request: Request) -> SearchRequest:
    try:
        body = SearchJSON.model_validate_json(await request.body())
    except ValidationError as exc:
        raise ApiError(422, *reason_for_validation(exc.errors())) from exc
    return body.request()


async def _drain(request: Request) -> None:
    """Read and drop what is left of a refused request's body (for a short while), so the client, still
    sending, gets to read the 503 rather than a reset connection."""
    with anyio.move_on_after(DRAIN_SECONDS):
        async for _chunk in request.stream():
            pass


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

