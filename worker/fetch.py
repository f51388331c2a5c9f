"""Download stage: one image URL -> its bytes, without ever becoming a way into the local network.

Every connection goes through :class:`AddressPolicy`: the host is resolved once, every address it resolves to
is checked (loopback, private, link-local, metadata, multicast and reserved ranges are refused unless an
allowed network covers them) and the socket connects to the address that was checked, so there is no second
lookup to race. Redirects open new connections through the same guard, so every hop is checked. TLS still
verifies the certificate against the host name, because only the socket creation is replaced.

The deadline holds from the first connect to the last byte. Timeouts alone cannot do that: a server that sends
its status line and headers one byte at a time, each inside the read timeout, keeps http.client reading
forever, and Celery's thread and solo pools enforce no task time limit. So every socket a download uses is
watched (:class:`_DeadlineWatch`): when the deadline passes, one shared watchdog thread shuts it down, which
wakes whatever read is blocked on it, TLS or not.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import ipaddress
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from lookalike.state.errors import FETCH, Rejected

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CHUNK_BYTES = 64 * 1024


class FetchError(Rejected):
    """A download failed; ``reason`` is a short stable token (``http_404``, ``forbidden_address`` ...)."""

    stage = FETCH
    retryable = False


class PermanentFetchError(FetchError):
    """Retrying cannot help (4xx other than 429, a refused address, a bad scheme, too large)."""


class TransientFetchError(FetchError):
    """Worth retrying later (connection errors, timeouts, 429, 5xx)."""

    retryable = True
    transient = True

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class ForbiddenAddress(PermanentFetchError):
    def __init__(self, detail: str) -> None:
        super().__init__("forbidden_address", detail)


class DownloadTooLarge(PermanentFetchError):
    def __init__(self, detail: str) -> None:
        super().__init__("too_large", detail)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
# IPv6 ranges Python's ipaddress calls global that no image host uses: IPv4-compatible (deprecated, RFC 4291),
# IPv4-mapped (the socket would reach an IPv4 host), IPv4-translated (RFC 2765) and site-local (deprecated,
# RFC 3879, still routed inside some networks). Refused whatever the IPv4 address inside.
_DEPRECATED_V6 = tuple(ipaddress.ip_network(net) for net in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "fec0::/10"))
ALLOW_SETTING = "LOOKALIKE_FETCH_ALLOW_NETWORKS"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address stands for: mapped, NAT64 (well-known prefix), 6to4, Teredo."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a download may connect to: public unicast only, plus ``allowed`` networks."""

    allowed: tuple[IPNetwork, ...] = ()
    setting: str = ALLOW_SETTING  # the setting that widens it, named when an address is refused

    @classmethod
    def from_networks(cls, networks: Iterable[IPNetwork], setting: str = ALLOW_SETTING) -> AddressPolicy:
        return cls(tuple(networks), setting)

    def check(self, address: IPAddress) -> None:
        if any(address in network for network in self.allowed):
            return
        if address.is_multicast or address.is_unspecified or not address.is_global:
            raise ForbiddenAddress(f"{address} is not a public address")
        if isinstance(address, ipaddress.IPv6Address):
            if any(address in network for network in _DEPRECATED_V6):
                raise ForbiddenAddress(f"{address} is in a deprecated or IPv4-mapped IPv6 range")
            # IPv6 forms that carry an IPv4 address a translator would reach: the IPv4 one must pass too.
            if address in _LOCAL_NAT64:
                raise ForbiddenAddress(f"{address} is a local-use NAT64 address")
            for embedded in _embedded_ipv4(address):
                self.check(embedded)

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """getaddrinfo results for ``host``, every one of them checked; refuses if any is forbidden."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                raise PermanentFetchError("dns_not_found", f"{host}: {exc.strerror}") from exc
            raise TransientFetchError("dns_error", f"{host}: {exc.strerror}") from exc
        if not infos:
            raise PermanentFetchError("dns_not_found", host)
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            try:
                self.check(address)
            except ForbiddenAddress as exc:
                raise ForbiddenAddress(
                    f"{host} resolves to {address}, which is not a public address "
                    f"(add its network to {self.setting} to allow it)"
                ) from exc
        return infos


DEADLINE_EXCEEDED = "deadline_exceeded"


class _DeadlineWatch:
    """The sockets one download is using, shut down by the watchdog if the download outlives its deadline.

    Each socket is watched through a duplicate of its file descriptor: ``shutdown`` acts on the socket itself,
    so it reaches the connection even while the TLS handshake has detached the original socket object, and the
    duplicate can never name another socket later. A connection handed back to the pool is released first, so a
    deadline never cuts a connection that another download has taken since.
    """

    def __init__(self, deadline: float) -> None:
        self.started = time.monotonic()
        self.expires = self.started + deadline
        self.fired = False
        self._lock = threading.Lock()
        self._closed = False
        self._watched: dict[int, socket.socket] = {}

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def watch(self, owner: object, sock: socket.socket) -> None:
        with self._lock:
            if self._closed or id(owner) in self._watched:
                return
            if self.fired:
                # Too late already: cut it at once rather than let it start a read nobody will stop.
                sock.shutdown(socket.SHUT_RDWR)
                return
            self._watched[id(owner)] = sock.dup()

    def release(self, owner: object) -> None:
        with self._lock:
            duplicate = self._watched.pop(id(owner), None)
        if duplicate is not None:
            duplicate.close()

    def expire(self) -> None:
        """Called by the watchdog at the deadline: cut every socket still in use."""
        with self._lock:
            if self._closed:
                return
            self.fired = True
            for duplicate in self._watched.values():
                with contextlib.suppress(OSError):  # not connected (yet, or any more): nothing blocks on it
                    duplicate.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watched, self._watched = list(self._watched.values()), {}
        for duplicate in watched:
            duplicate.close()


class _Watchdog:
    """One thread for every download of the process: a heap of deadlines, each expired when it is due.

    A thread per download would cost a thread start per image; the heap costs a push. Entries of downloads that
    ended stay until their time comes and are then dropped (expiring a closed watch does nothing).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, _DeadlineWatch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, watch: _DeadlineWatch) -> None:
        with self._condition:
            heapq.heappush(self._heap, (watch.expires, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lookalike-fetch-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][2] is watch:
                self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._condition.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, watch = heapq.heappop(self._heap)
            watch.expire()

    def reset_after_fork(self) -> None:
        """A forked child has no watchdog thread: start afresh (its parent's downloads are not its own)."""
        self._condition = threading.Condition()
        self._heap = []
        self._thread = None


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.reset_after_fork)
_current = threading.local()


def _current_watch() -> _DeadlineWatch | None:
    return getattr(_current, "watch", None)


def _connect_checked(
    policy: AddressPolicy,
    host: str,
    port: int,
    timeout: float | None,
    socket_options: Sequence[tuple[int, int, int | bytes]] | None,
) -> socket.socket:
    watch = _current_watch()
    last_error: OSError | None = None
    for family, kind, proto, _name, address in policy.resolve(host, port):
        if watch is not None:
            # A connect in progress is not woken by shutdown: bound it by what is left of the deadline instead.
            left = watch.remaining()
            if left <= 0:
                raise TimeoutError("deadline passed before connecting")
            timeout = left if timeout is None else min(timeout, left)
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not None:
                sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            last_error = exc
            sock.close()
    assert last_error is not None
    raise last_error


def _guarded_pool_classes(policy: AddressPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes whose connections open sockets only through ``policy``."""

    def new_conn(conn: HTTPConnection) -> socket.socket:
        try:
            sock = _connect_checked(policy, conn._dns_host, conn.port, conn.timeout, conn.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out") from exc
        except FetchError:
            raise
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
        watch = _current_watch()
        if watch is not None:
            watch.watch(conn, sock)
        return sock

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class WatchedPool(HTTPConnectionPool):
        """Connections taken from the pool are watched by the download's deadline; handed back, released."""

        def _get_conn(self, timeout: float | None = None) -> Any:
            conn: Any = super()._get_conn(timeout)
            watch = _current_watch()
            if watch is not None and conn.sock is not None:  # a pooled connection: its socket already exists
                watch.watch(conn, conn.sock)
            return conn

        def _put_conn(self, conn: Any) -> None:
            watch = _current_watch()
            if watch is not None and conn is not None:
                watch.release(conn)
            super()._put_conn(conn)

    class GuardedHTTPConnectionPool(WatchedPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool, WatchedPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


@dataclass(frozen=True)
class FetchLimits:
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    deadline: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    retry_after_cap: float = 300.0


@dataclass(frozen=True)
class FetchedImage:
    url: str
    final_url: str
    data: bytes
    content_type: str | None
    seconds: float


class DownloadClient:
    """A pool of guarded connections for downloads, over urllib3 directly (requests' session machinery cost about
    as much CPU per download as the request itself: setting merges, hooks, cookie jars, runtime protocol checks).

    What it does not do is on purpose: no proxies (from the environment or otherwise), no netrc, no cookies (none
    is kept or sent: one image host cannot tag a worker's requests to another, or to itself later), and redirects
    are followed here, hop by hop, each hop's scheme checked and its connection opened through the address guard.
    TLS certificates are verified against certifi's bundle (what requests used)."""

    def __init__(self, policy: AddressPolicy, *, user_agent: str, max_redirects: int, pool_size: int = 64) -> None:
        self.max_redirects = max_redirects
        self.headers = {"User-Agent": user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
        options: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        try:
            import certifi

            options["ca_certs"] = certifi.where()
        except ImportError:  # the system's store then (urllib3's default)
            pass
        self._pools = urllib3.PoolManager(num_pools=64, maxsize=pool_size, retries=False, **options)
        self._pools.pool_classes_by_scheme = _guarded_pool_classes(policy)

    @property
    def cookies(self) -> tuple[()]:
        """The cookies kept: never any."""
        return ()

    def get(self, url: str, timeout: urllib3.Timeout) -> urllib3.BaseHTTPResponse:
        """The response to GET ``url`` after its redirects, its body not read (the caller streams it)."""
        for _hop in range(self.max_redirects + 1):
            response = self._pools.urlopen(
                "GET", url, headers=self.headers, redirect=False, retries=False, preload_content=False, timeout=timeout
            )
            location = response.get_redirect_location()
            if not location:
                response.url = url
                return response
            response.release_conn() if _drained(response) else response.close()
            url = urljoin(url, location)
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise PermanentFetchError("bad_scheme", "redirected to a scheme other than http(s)")
            if not parts.hostname:
                raise PermanentFetchError("bad_url", "redirected to a URL with no host")
        raise PermanentFetchError("too_many_redirects", f"more than {self.max_redirects}")

    def close(self) -> None:
        self._pools.clear()

    def __enter__(self) -> DownloadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# A redirect's body worth reading to keep its connection (a short page); a longer one closes the connection.
_REDIRECT_BODY_BYTES = 64 * 1024


def _drained(response: urllib3.BaseHTTPResponse) -> bool:
    """Read a redirect's short body so its connection can serve the next hop; False when it is not short."""
    declared = response.headers.get("Content-Length", "")
    if not declared.isdigit() or int(declared) > _REDIRECT_BODY_BYTES:
        return False
    try:
        response.read(int(declared) + 1, decode_content=False)
    except (HTTPError, OSError):
        return False
    return True


def make_session(
    policy: AddressPolicy, *, user_agent: str, max_redirects: int, pool_size: int = 64
) -> DownloadClient:
    """A pooled client for downloads: guarded sockets, no proxies, no netrc, no cookies.

    It asks for the bytes as stored (``Accept-Encoding: identity``): images are compressed already, and a
    content encoding only adds inflation work and a bomb to defuse (a server may still send one: the byte cap
    counts inflated bytes, and urllib3 >= 2.6 inflates no more than each read asks for)."""
    return DownloadClient(policy, user_agent=user_agent, max_redirects=max_redirects, pool_size=pool_size)


def _retry_after_seconds(value: str | None, cap: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), cap)


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise PermanentFetchError("bad_url", str(exc)) from exc
    if parts.scheme not in ("http", "https"):
        raise PermanentFetchError("bad_scheme", f"only http and https are fetched, not {parts.scheme or '(none)'}:")
    if not parts.hostname:
        raise PermanentFetchError("bad_url", "no host in URL")


def fetch_image(url: str, session: DownloadClient, limits: FetchLimits) -> FetchedImage:
    """Download one image, streaming, within the byte cap and the overall deadline (connect to last byte).

    Raises :class:`TransientFetchError` for what a later retry may fix and :class:`PermanentFetchError` for
    what it cannot.
    """
    _check_url(url)
    watch = _DeadlineWatch(limits.deadline)
    outer = _current_watch()
    _current.watch = watch
    _WATCHDOG.add(watch)
    try:
        fetched = _fetch(url, session, limits, watch.started)
    except FetchError as exc:
        if watch.fired and exc.reason != DEADLINE_EXCEEDED:
            # Whatever the cut connection looked like (a reset, a TLS error, a short body), it was the deadline.
            raise TransientFetchError(DEADLINE_EXCEEDED, f"download took over {limits.deadline:g}s") from exc
        raise
    finally:
        watch.close()
        _current.watch = outer
    if watch.fired:
        # A body that ends when the connection closes looks complete when the watchdog closed it.
        raise TransientFetchError(DEADLINE_EXCEEDED, f"download took over {limits.deadline:g}s")
    return fetched


def _request_error(exc: Exception, url: str) -> FetchError:
    """What a failed request (connecting, sending, reading the status and headers) means for a retry."""
    cause = exc.__context__ or exc.__cause__
    if isinstance(cause, FetchError):
        return cause
    if isinstance(exc, SSLError):
        return PermanentFetchError("tls_error", str(exc)[:200])
    if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError: urllib3 makes it a subclass of it
        return TransientFetchError("connection_error", str(exc)[:200])
    if isinstance(exc, ConnectTimeoutError):
        return TransientFetchError("connect_timeout", url)
    if isinstance(exc, (ReadTimeoutError, TimeoutError)):
        return TransientFetchError("read_timeout", url)
    if isinstance(exc, LocationValueError):
        return PermanentFetchError("bad_url", str(exc)[:200])
    if isinstance(exc, ProtocolError) and any(isinstance(arg, http.client.InvalidURL) for arg in exc.args):
        return PermanentFetchError("bad_url", str(exc)[:200])
    return TransientFetchError("connection_error", str(exc)[:200])


def _fetch(url: str, session: DownloadClient, limits: FetchLimits, started: float) -> FetchedImage:
    try:
        response = session.get(url, urllib3.Timeout(connect=limits.connect_timeout, read=limits.read_timeout))
    except FetchError:
        raise
    except (HTTPError, OSError, http.client.HTTPException) as exc:
        raise _request_error(exc, url) from exc

    try:
        status = response.status
        if status == 429 or status >= 500:
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"), limits.retry_after_cap)
            raise TransientFetchError(f"http_{status}", url, retry_after=retry_after)
        if status != 200:
            raise PermanentFetchError(f"http_{status}", url)
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limits.max_bytes:
            raise DownloadTooLarge(f"Content-Length {declared} > {limits.max_bytes} bytes")
        chunks: list[bytes] = []
        received = 0
        try:
            while True:
                # read1 returns as soon as any data arrives, so a server trickling bytes just inside the read
                # timeout still meets the deadline check; the byte cap counts decoded (decompressed) bytes.
                chunk = response.read1(CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                received += len(chunk)
                if received > limits.max_bytes:
                    raise DownloadTooLarge(f"more than {limits.max_bytes} bytes")
                if time.monotonic() - started > limits.deadline:
                    raise TransientFetchError(DEADLINE_EXCEEDED, f"download took over {limits.deadline:g}s")
                chunks.append(chunk)
        except FetchError:
            raise
        except (ReadTimeoutError, TimeoutError) as exc:
            raise TransientFetchError("read_timeout", url) from exc
        except DecodeError as exc:
            raise PermanentFetchError("bad_encoding", str(exc)[:200]) from exc
        except (HTTPError, OSError) as exc:
            raise TransientFetchError("connection_error", str(exc)[:200]) from exc
        if time.monotonic() - started > limits.deadline:
            raise TransientFetchError(DEADLINE_EXCEEDED, f"download took over {limits.deadline:g}s")
        fetched = FetchedImage(
            url=url,
            final_url=response.url or url,
            data=b"".join(chunks),
            content_type=response.headers.get("Content-Type"),
            seconds=time.monotonic() - started,
        )
    except BaseException:
        response.close()  # a body not read to its end: its connection cannot serve another request
        response.release_conn()
        raise
    response.release_conn()  # read to its end: the connection goes back to the pool
    return fetched
