"""Download stage: one image URL -> its bytes, without ever becoming a way into the local network.

Every connection goes through :class:`AddressPolicy`: the host is resolved once, every address it resolves to
is checked (loopback, private, link-local, metadata, multicast and reserved ranges are refused unless an
allowed network covers them) and the socket connects to the address that was checked, so there is no second
lookup to race. Redirects open new connections through the same guard, so every hop is checked. TLS still
verifies the certificate against the host name, because only the socket creation is replaced.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, DecodeError, HTTPError, NewConnectionError, ReadTimeoutError

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

    @classmethod
    def from_networks(cls, networks: Iterable[IPNetwork]) -> AddressPolicy:
        return cls(tuple(networks))

    def check(self, address: IPAddress) -> None:
        if any(address in network for network in self.allowed):
            return
        if address.is_multicast or address.is_unspecified or not address.is_global:
            raise ForbiddenAddress(f"{address} is not a public address")
        if isinstance(address, ipaddress.IPv6Address):
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
                raise ForbiddenAddress(f"{host} resolves to {address}, which is not a public address") from exc
        return infos


def _connect_checked(
    policy: AddressPolicy,
    host: str,
    port: int,
    timeout: float | None,
    socket_options: Sequence[tuple[int, int, int | bytes]] | None,
) -> socket.socket:
    last_error: OSError | None = None
    for family, kind, proto, _name, address in policy.resolve(host, port):
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
            return _connect_checked(policy, conn._dns_host, conn.port, conn.timeout, conn.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out") from exc
        except FetchError:
            raise
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class GuardedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


class GuardedAdapter(HTTPAdapter):
    """A requests adapter with connection pooling whose sockets are opened through an AddressPolicy."""

    def __init__(self, policy: AddressPolicy, pool_maxsize: int = 64) -> None:
        self._policy = policy
        super().__init__(pool_connections=64, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _guarded_pool_classes(self._policy)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise PermanentFetchError("proxy_refused", "downloads never go through a proxy")


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


def make_session(
    policy: AddressPolicy, *, user_agent: str, max_redirects: int, pool_size: int = 64
) -> requests.Session:
    """A pooled session for downloads: guarded sockets, no proxies from the environment, no netrc."""
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = max_redirects
    session.headers.update({"User-Agent": user_agent, "Accept": "image/*,*/*;q=0.5"})
    adapter = GuardedAdapter(policy, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


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


def fetch_image(url: str, session: requests.Session, limits: FetchLimits) -> FetchedImage:
    """Download one image, streaming, within the byte cap and the overall deadline.

    Raises :class:`TransientFetchError` for what a later retry may fix and :class:`PermanentFetchError` for
    what it cannot.
    """
    _check_url(url)
    started = time.monotonic()
    try:
        response = session.get(
            url, stream=True, timeout=(limits.connect_timeout, limits.read_timeout), allow_redirects=True
        )
    except FetchError:
        raise
    except requests.TooManyRedirects as exc:
        raise PermanentFetchError("too_many_redirects", f"more than {session.max_redirects}") from exc
    except requests.exceptions.InvalidSchema as exc:
        raise PermanentFetchError("bad_scheme", "redirected to a scheme other than http(s)") from exc
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
        raise PermanentFetchError("bad_url", str(exc)) from exc
    except requests.exceptions.SSLError as exc:
        raise PermanentFetchError("tls_error", str(exc)[:200]) from exc
    except requests.ConnectTimeout as exc:
        raise TransientFetchError("connect_timeout", url) from exc
    except requests.ReadTimeout as exc:
        raise TransientFetchError("read_timeout", url) from exc
    except requests.RequestException as exc:
        if isinstance(exc.__context__, FetchError):
            raise exc.__context__ from exc
        raise TransientFetchError("connection_error", str(exc)[:200]) from exc

    with response:
        status = response.status_code
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
                chunk = response.raw.read1(CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                received += len(chunk)
                if received > limits.max_bytes:
                    raise DownloadTooLarge(f"more than {limits.max_bytes} bytes")
                if time.monotonic() - started > limits.deadline:
                    raise TransientFetchError("deadline_exceeded", f"download took over {limits.deadline:g}s")
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
            raise TransientFetchError("deadline_exceeded", f"download took over {limits.deadline:g}s")
        return FetchedImage(
            url=url,
            final_url=response.url,
            data=b"".join(chunks),
            content_type=response.headers.get("Content-Type"),
            seconds=time.monotonic() - started,
        )
