"""The search page at ``/`` and its two files, served from this package (no build step, no CDN), with a
Content-Security-Policy that allows the page's own files and the catalogue's images only."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from lookalike.api.errors import ApiError

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src http: https: data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
STATIC_FILES = {
    "cards.js": "text/javascript; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "duplicates.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}


def _static(name: str) -> bytes:
    return resources.files("lookalike.api").joinpath("static", name).read_bytes()


def page_router() -> APIRouter:
    """``GET /`` (the page) and ``GET /static/{name}`` (its script and style sheet), read once."""
    router = APIRouter()
    page = _static("index.html")
    static = {name: _static(name) for name in STATIC_FILES}
    icon = _static("favicon.ico")

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        # Browsers ask for it whatever the page says: an answer, not a 404 in every log.
        return Response(icon, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})

    @router.get(
        "/",
        response_class=HTMLResponse,
        summary="The search page",
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
    )
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @router.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:
            raise ApiError(404, "not_found", f"no file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    return router
