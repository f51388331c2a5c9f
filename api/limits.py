"""The request body's limits (size and time), enforced while the body streams in, and a client that leaves.

Two checks, both where the app pulls the body: a declared ``Content-Length`` over the limit is refused on
the first pull, before any of the body is read, and a body without one (chunked) is counted chunk by chunk;
the chunk that crosses the limit is never handed over. Checking on the first pull rather than on arrival lets
the router run first, so the 413 is counted under its route (a route that never reads a body never refuses
one). Whatever the app does with the refusal (multipart parsing turns it into its own error), its response is
dropped and replaced by one 413, so the client always sees the same ``too_large`` answer.

Time: each pull waits at most ``read_timeout`` for the next piece, and the whole body must arrive within
``body_timeout`` of the first pull; past either, one 408 ``body_timeout`` (with ``Connection: close``: the rest
of the body is never read). A client that closes its connection before its body arrived whole (an abort, a lost
phone signal) is one log line, counted as status 499; it is not a server error and gets no answer.
"""

from __future__ import annotations

import logging
import time

import anyio
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lookalike.api.errors import error_response

log = logging.getLogger("lookalike.api")

# The status the access log and metrics count a request under when its client left before its body arrived.
CLIENT_CLOSED = 499


class BodyTooLarge(Exception):
    """Raised into the app when the body it is reading crosses the limit."""


class BodyTooSlow(Exception):
    """Raised into the app when the next piece of the body does not arrive in time."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_bytes: int, read_timeout: float = 10.0, body_timeout: float = 60.0
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.body_timeout = body_timeout

    def _too_large(self, scope: Scope) -> ASGIApp:
        return error_response(
            scope, 413, "too_large", f"the request body is over {self.max_bytes} bytes (LOOKALIKE_MAX_UPLOAD_BYTES)"
        )

    def _too_slow(self, scope: Scope) -> ASGIApp:
        return error_response(
            scope,
            408,
            "body_timeout",
            f"the request body did not arrive in time (LOOKALIKE_API_READ_TIMEOUT {self.read_timeout:g} s between "
            f"pieces, LOOKALIKE_API_BODY_TIMEOUT {self.body_timeout:g} s in all)",
            {"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0
        exceeded = slow = gone = body_done = False
        response_started = False
        first_pull: float | None = None

        async def counting_receive() -> Message:
            nonlocal received, exceeded, slow, gone, body_done, first_pull
            if body_done:
                return await receive()  # after the body: only a disconnect can come, whenever it comes
            if declared is not None and declared > self.max_bytes:
                exceeded = True  # refused on its headers: not one byte of the body is read
                raise BodyTooLarge()
            now = time.monotonic()
            first_pull = now if first_pull is None else first_pull
            wait = min(self.read_timeout, self.body_timeout - (now - first_pull))
            with anyio.move_on_after(max(0.0, wait)) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                slow = True
                raise BodyTooSlow()
            if message["type"] == "http.disconnect":
                gone = True
            elif message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge()
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded or slow or gone:
                return  # the app's answer to a body it never got whole; ours follows (none to a gone client)
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except (BodyTooLarge, BodyTooSlow):
            pass
        except ClientDisconnect:
            if not gone:
                raise
        except Exception:
            if not (exceeded or slow or gone):
                raise
        if response_started:
            return
        if gone:
            scope.setdefault("state", {})["answered_status"] = CLIENT_CLOSED
            log.info("the client closed the connection after %d bytes of its request body", received)
        elif exceeded:
            await self._too_large(scope)(scope, receive, send)
        elif slow:
            await self._too_slow(scope)(scope, receive, send)
