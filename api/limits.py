"""The request body limit, enforced while the body streams in, before anything reads it all.

Two checks, both where the app pulls the body: a declared ``Content-Length`` over the limit is refused on
the first pull, before any of the body is read, and a body without one (chunked) is counted chunk by chunk;
the chunk that crosses the limit is never handed over. Checking on the first pull rather than on arrival lets
the router run first, so the 413 is counted under its route (a route that never reads a body never refuses
one). Whatever the app does with the refusal (multipart parsing turns it into its own error), its response is
dropped and replaced by one 413, so the client always sees the same ``too_large`` answer.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lookalike.api.errors import error_response


class BodyTooLarge(Exception):
    """Raised into the app when the body it is reading crosses the limit."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, scope: Scope) -> ASGIApp:
        return error_response(
            scope, 413, "too_large", f"the request body is over {self.max_bytes} bytes (LOOKALIKE_MAX_UPLOAD_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if declared is not None and declared > self.max_bytes:
                exceeded = True  # refused on its headers: not one byte of the body is read
                raise BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return  # the app's answer to a body it never got whole; ours follows
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await self._too_large(scope)(scope, receive, send)
