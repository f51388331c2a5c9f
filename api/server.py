"""How `lookalike serve` runs uvicorn: its limits, and the one it lacks (a time limit on a request's headers).

uvicorn (h11) bounds a request's header size (``h11_max_incomplete_event_size``, 16 KiB by default) and an idle
keep-alive connection (``timeout_keep_alive``, 5 s), and answers 503 past ``limit_concurrency`` connections plus
requests; it has no limit on how long the headers may take to arrive: a client sending one byte a second holds
its connection, and its file descriptor, for as long as it likes. :class:`TimedH11Protocol` closes a connection
whose request headers are not whole within ``LOOKALIKE_API_READ_TIMEOUT``; the body's limits are the app's
(:mod:`lookalike.api.limits`). None of this makes the API fit to face the public internet alone: put a reverse
proxy in front of it there (TLS, per-client rate limits, slow-client buffering).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from lookalike.config.settings import Settings

log = logging.getLogger("lookalike.api")

# File descriptors kept for everything but client connections: the broker pool, log files, the store, ...
RESERVED_FILES = 64
MAX_HEADER_BYTES = 16 * 1024


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive whole in time.

    The clock starts when a request's first byte arrives (on a new connection, or on a kept-alive one after
    the previous response) and stops when h11 has parsed the headers."""

    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def handle_events(self) -> None:
        previous = self.cycle
        super().handle_events()
        if self.cycle is not previous:
            self._disarm_header_timer()  # a request's headers were parsed: the app's limits take over

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            log.info("closed a connection whose request headers took over %gs", self.header_timeout)
            self.transport.close()


def timed_protocol(header_timeout: float) -> type[TimedH11Protocol]:
    """The protocol class with ``header_timeout`` (uvicorn takes a class, and builds one per connection)."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": header_timeout})


def connection_limit(settings: Settings) -> int:
    """``LOOKALIKE_API_MAX_CONNECTIONS``, within the open-files limit: the soft limit is raised to the hard one
    if it is needed, and the connections are capped below it otherwise (a client past it gets 503, instead of
    the whole server failing to accept with "Too many open files")."""
    wanted = settings.api_max_connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return settings.api_max_connections
    return max(8, min(settings.api_max_connections, soft - RESERVED_FILES))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` that bound what clients may hold."""
    return {
        "http": timed_protocol(settings.api_read_timeout),
        "limit_concurrency": connection_limit(settings),
        "timeout_keep_alive": 5,  # seconds an idle kept-alive connection stays open
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,  # request line plus headers
        "timeout_graceful_shutdown": 10,  # then requests still running are cut
        "server_header": False,
    }


__all__ = ["TimedH11Protocol", "connection_limit", "uvicorn_options"]
