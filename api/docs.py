"""The security headers of the API's own documentation (/docs, its files under /docs-static, /openapi.json).

The search page has a strict Content-Security-Policy, ``nosniff`` and ``frame-ancestors 'none'``; the Swagger
UI page had none of them, so it could be framed (clickjacking with the "Try it out" buttons) and its files
sniffed. It gets the same headers here. Its one inline script (the ``SwaggerUIBundle`` call FastAPI writes) is
allowed by its SHA-256, computed from the page as served, so the policy needs no ``'unsafe-inline'`` for
scripts; Swagger UI sets ``style`` attributes, so styles allow inline, and its icons are ``data:`` images.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATH = "/docs"
COVERED = ("/docs", "/docs-static/", "/openapi.json")
DOCS_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def docs_policy(page: bytes) -> str:
    """The docs page's Content-Security-Policy, with a hash for each inline script of ``page``."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


# Everything else under COVERED (the static files, the OpenAPI document) loads nothing itself.
FILES_POLICY = "default-src 'none'; frame-ancestors 'none'"


class DocsHeadersMiddleware:
    """Adds the headers to every response under :data:`COVERED`; the docs page's own response is held (it is
    under a kilobyte) until its body is known, to hash its inline script."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = headers or DOCS_HEADERS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == DOCS_PATH or path.startswith(COVERED[1:])):
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def with_headers(message: Message) -> None:
            if path != DOCS_PATH:
                if message["type"] == "http.response.start":
                    headers = MutableHeaders(scope=message)
                    headers.update(self.headers)
                    headers["Content-Security-Policy"] = FILES_POLICY
                await send(message)
                return
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                start, *bodies = held
                headers = MutableHeaders(scope=start)
                headers.update(self.headers)
                headers["Content-Security-Policy"] = docs_policy(b"".join(m.get("body", b"") for m in bodies))
                for part in (start, *bodies):
                    await send(part)

        await self.app(scope, receive, with_headers)


__all__ = ["DOCS_HEADERS", "DocsHeadersMiddleware", "docs_policy"]
