"""Download stage against a real HTTP server on 127.0.0.1: status codes, byte caps, the deadline, redirects,
schemes, refused connections and connection pooling."""

from __future__ import annotations

import contextlib
import ipaddress
import resource
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from email.utils import formatdate

import pytest

from lookalike.testing import images
from lookalike.testing.server import ImageServer, Route
from lookalike.worker.fetch import (
    AddressPolicy,
    DownloadClient,
    DownloadTooLarge,
    FetchLimits,
    ForbiddenAddress,
    PermanentFetchError,
    TransientFetchError,
    fetch_image,
    make_session,
)

LOOPBACK = AddressPolicy.from_networks([ipaddress.ip_network("127.0.0.0/8")])
MAX_BYTES = 1_000_000
LIMITS = FetchLimits(connect_timeout=1.0, read_timeout=1.0, deadline=2.0, max_bytes=MAX_BYTES)


@pytest.fixture
def session() -> Iterator[DownloadClient]:
    with make_session(LOOPBACK, user_agent="t", max_redirects=3) as s:
        yield s


# ------------------------------------------------------------------------------------------ status codes
def test_ok_returns_exact_bytes(server: ImageServer, session: DownloadClient) -> None:
    body = images.product_bytes(1, "PNG")
    url = server.add("/images/I/a.png", Route(body=body, content_type="image/png"))
    fetched = fetch_image(url, session, LIMITS)
    assert fetched.data == body
    assert fetched.url == fetched.final_url == url
    assert fetched.content_type == "image/png"
    assert fetched.seconds < LIMITS.deadline
    assert server.hits("/images/I/a.png") == 1


def test_empty_body_is_returned_as_is(server: ImageServer, session: DownloadClient) -> None:
    url = server.add("/empty.jpg", Route(body=b""))
    assert fetch_image(url, session, LIMITS).data == b""


def test_404_is_permanent(server: ImageServer, session: DownloadClient) -> None:
    with pytest.raises(PermanentFetchError) as excinfo:
        fetch_image(server.url("/images/I/missing.jpg"), session, LIMITS)
    assert excinfo.value.reason == "http_404"
    assert not excinfo.value.retryable
    assert not isinstance(excinfo.value, TransientFetchError)


@pytest.mark.parametrize("status", [403, 410])
def test_other_4xx_are_permanent(server: ImageServer, session: DownloadClient, status: int) -> None:
    url = server.add(f"/s{status}.jpg", Route(status=status))
    with pytest.raises(PermanentFetchError) as excinfo:
        fetch_image(url, session, LIMITS)
    assert excinfo.value.reason == f"http_{status}"


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_5xx_and_429_are_transient(server: ImageServer, session: DownloadClient, status: int) -> None:
    url = server.add(f"/s{status}.jpg", Route(status=status))
    with pytest.raises(TransientFetchError) as excinfo:
        fetch_image(url, session, LIMITS)
    assert excinfo.value.reason == f"http_{status}"
    assert excinfo.value.retryable
    assert excinfo.value.retry_after is None


def test_429_retry_after_seconds(server: ImageServer, session: DownloadClient) -> None:
    url = server.add("/throttled.jpg", Route(status=429, headers={"Retry-After": "7"}))
    with pytest.raises(TransientFetchError) as excinfo:
        fetch_image(url, session, LIMITS)
    assert excinfo.value.reason == "http_429"
    assert excinfo.value.retry_after == 7


def test_429_retry_after_http_date_and_cap(server: ImageServer, session: DownloadClient) -> None:
    url = server.add("/date.jpg", Route(status=429, headers={"Retry-After": formatdate(time.time() + 60, usegmt=True)}))
    with pytest.raises(TransientFetchError) as excinfo:
        fetch_image(url, session, LIMITS)
    assert excinfo.value.retry_after is not None and 55 <= excinfo.value.retry_after <= 61

    capped = server.add("/capped.jpg", Route(status=503, headers={"Retry-After": "86400"}))
    with pytest.raises(TransientFetchError) as excinfo:
        fetch_image(capped, session, LIMITS)
    assert excinfo.value.retry_after == LIMITS.retry_after_cap


def test_fail_then_succeed(server: ImageServer, session: DownloadClient) -> None:
    body = images.product_bytes(2)
    url = server.add("/flaky.jpg", Route(body=body, fail_first=1))
    with pytest.raises(TransientFetchError):
        fetch_image(url, session, LIMITS)
    assert fetch_image(url, session, LIMITS).data == body
    assert server.hits("/flaky.jpg") == 2


# ------------------------------------------------------------------------------------------ size cap
def test_declared_content_length_over_cap_reads_only_headers(server: ImageServer, session: DownloadClient) -> None:
    # Reading the body would take 5 s (it trickles): refusing within 1 s proves only the headers were read.
    url = server.add("/huge.jpg", Route(body=b"\xff" * (MAX_BYTES * 3), trickle_seconds=5))
    started = time.monotonic()
    with pytest.raises(DownloadTooLarge) as excinfo:
        fetch_image(url, session, LIMITS)
    assert time.monotonic() - started < 1.0
    assert excinfo.value.reason == "too_large"
    assert "Content-Length" in str(excinfo.value)
    assert not excinfo.value.retryable


def test_body_exactly_at_cap_is_accepted(server: ImageServer, session: DownloadClient) -> None:
    body = bytes(range(256)) * (MAX_BYTES // 256) + b"x" * (MAX_BYTES % 256)
    assert len(body) == MAX_BYTES
    url = server.add("/exact.bin", Route(body=body))
    assert fetch_image(url, session, LIMITS).data == body


def test_chunked_over_cap_is_refused_while_streaming(server: ImageServer, session: DownloadClient) -> None:
    url = server.add("/chunked-huge.jpg", Route(body=b"\x00" * (MAX_BYTES * 4), chunked=True))
    started = time.monotonic()
    with pytest.raises(DownloadTooLarge) as excinfo:
        fetch_image(url, session, LIMITS)
    assert time.monotonic() - started < 1.0
    assert excinfo.value.reason == "too_large"
    assert "Content-Length" not in str(excinfo.value)  # no header to go by: the stream was counted


def test_chunked_under_cap_is_read(server: ImageServer, session: DownloadClient) -> None:
    body = images.product_bytes(3, size=(1200, 900))
    url = server.add("/chunked.jpg", Route(body=body, chunked=True))
    assert fetch_image(url, session, LIMITS).data == body


# ------------------------------------------------------------------------------------------ the deadline
SLOW_LIMITS = FetchLimits(connect_timeout=1.0, read_timeout=0.5, deadline=1.0, max_bytes=MAX_BYTES)


def _assert_deadline(server: ImageServer, session: DownloadClient, path: str, size: int) -> None:
    # 20 pieces over 3 s: a piece every 0.15 s, so the read timeout (0.5 s) never fires; only the deadline can.
    url = server.add(path, Route(body=b"\x01" * size, trickle_seconds=3.0))
    started = time.monotonic()
    with pytest.raises(TransientFetchError) as excinfo:
        fetch_image(url, session, SLOW_LIMITS)
    elapsed = time.monotonic() - started
    assert excinfo.value.reason == "deadline_exceeded"
    assert elapsed <= SLOW_LIMITS.deadline + SLOW_LIMITS.read_timeout + 1.0, f"returned after {elapsed:.2f}s"


def test_slow_large_body_hits_the_deadline(server: ImageServer, session: DownloadClient) -> None:
    _assert_deadline(server, session, "/slow-large.jpg", 600_000)  # 30 kB pieces: 64 kB reads end often


def test_slow_small_body_hits_the_deadline(server: ImageServer, session: DownloadClient) -> None:
    _assert_deadline(server, session, "/slow-small.jpg", 30_000)  # under one 64 kB read


def test_fast_body_within_the_deadline(server: ImageServer, session: DownloadClient) -> None:
    body = images.product_bytes(4)
    url = server.add("/slowish.jpg", Route(body=body, trickle_seconds=0.3))
    assert fetch_image(url, session, SLOW_LIMITS).data == body


# ------------------------------------------------------------------------------------------ redirects
def _chain(server: ImageServer, name: str, hops: int, body: bytes) -> str:
    final = server.add(f"/{name}/final.jpg", Route(body=body))
    target = final
    for hop in range(hops, 0, -1):
        target = server.add(f"/{name}/hop{hop}", Route(redirect_to=target))
    return target


def test_redirects_within_the_limit(server: ImageServer, session: DownloadClient) -> None:
    body = images.product_bytes(5)
    start = _chain(server, "ok", 3, body)
    fetched = fetch_image(start, session, LIMITS)
    assert fetched.data == body
    assert fetched.url == start
    assert fetched.final_url == server.url("/ok/final.jpg")


def test_relative_redirect(server: ImageServer, session: DownloadClient) -> None:
    body = images.product_bytes(6)
    server.add("/rel/final.jpg", Route(body=body))
    url = server.add("/rel/start", Route(redirect_to="/rel/final.jpg"))
    assert fetch_image(url, session, LIMITS).data == body


def test_too_many_redirects(server: ImageServer, session: DownloadClient) -> None:
    start = _chain(server, "long", 4, b"never")
    with pytest.raises(PermanentFetchError) as excinfo:
        fetch_image(start, session, LIMITS)
    assert excinfo.value.reason == "too_many_redirects"
    assert server.hits("/long/final.jpg") == 0


def test_redirect_loop(server: ImageServer, session: DownloadClient) -> None:
    server.add("/loop/a", Route(redirect_to=server.url("/loop/b")))
    url = server.add("/loop/b", Route(redirect_to=server.url("/loop/a")))
    with pytest.raises(PermanentFetchError) as excinfo:
        fetch_image(url, session, LIMITS)
    assert excinfo.value.reason == "too_many_redirects"


def test_redirect_to_file_scheme(server: ImageServer, session: DownloadClient) -> None:
    url = server.add("/to-file", Route(redirect_to="file:///etc/passwd"))
    with pytest.raises(PermanentFetchError) as excinfo:
        fetch_image(url, session, LIMITS)
    assert excinfo.value.reason == "bad_scheme"
    assert "root:" not in str(excinfo.value)


# ------------------------------------------------------------------------------------------ schemes, addresses
@pytest.mark.parametrize(
    "template",
    [
        "ftp://127.0.0.1:{port}/a.jpg",
        "file:///etc/passwd",
        "file://127.0.0.1:{port}/a.jpg",
        "gopher://127.0.0.1:{port}/",
    ],
)
def test_bad_scheme_before_any_request(
    server: ImageServer, session: DownloadClient, monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    server.add("/a.jpg", Route(body=b"x"))
    connects: list[object] = []
    original = socket.socket.connect

    def counting_connect(self: socket.socket, address: object) -> None:
        connects.append(address)
        original(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    with pytest.raises(PermanentFetchError) as excinfo:
        fetch_image(template.format(port=server.port), session, LIMITS)
    assert excinfo.value.reason == "bad_scheme"
    assert server.hits() == 0
    assert connects == []


def test_connection_refused_is_transient(session: DownloadClient) -> None:
    # A socket bound but not listening: the port is ours, and connecting to it is refused at once.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TransientFetchError) as excinfo:
            fetch_image(f"http://127.0.0.1:{port}/a.jpg", session, LIMITS)
        assert time.monotonic() - started < LIMITS.connect_timeout + 0.5
    assert excinfo.value.reason == "connection_error"
    assert excinfo.value.retryable


def test_loopback_refused_without_an_allowed_network(server: ImageServer) -> None:
    url = server.add("/private.jpg", Route(body=b"secret"))
    with (
        make_session(AddressPolicy(), user_agent="t", max_redirects=3) as strict,
        pytest.raises(ForbiddenAddress) as excinfo,
    ):
        fetch_image(url, strict, LIMITS)
    assert excinfo.value.reason == "forbidden_address"
    assert server.hits() == 0


# ------------------------------------------------------------------------------------------ pooling
def test_session_reuses_connections(
    server: ImageServer, session: DownloadClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = images.product_bytes(7)
    paths = [server.add(f"/pool/{i}.jpg", Route(body=body)) for i in range(4)]
    connects: list[object] = []
    original = socket.socket.connect

    def counting_connect(self: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address[1] == server.port:
            connects.append(address)
        original(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    for i in range(20):
        assert fetch_image(paths[i % 4], session, LIMITS).data == body
    assert server.hits() == 20
    assert 1 <= len(connects) <= 2, f"{len(connects)} TCP connections for 20 sequential fetches"


# ------------------------------------------------------------------------------------------ trickling servers
class RawServer:
    """A TCP server on 127.0.0.1 that answers every connection by sending ``pieces`` one ``gap`` apart.

    The image server speaks proper HTTP; this one sends whatever bytes a test scripts (a status line and
    headers one byte at a time, say), which is how a hostile or broken server holds a client.
    """

    def __init__(self, pieces: list[bytes], gap: float, respond: Callable[[bytes], bytes] | None = None) -> None:
        self.pieces = pieces
        self.gap = gap
        self.respond = respond  # when given: the whole answer to each request, at once
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, path: str = "/a.jpg") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            received = b""
            conn.settimeout(2.0)
            with contextlib.suppress(OSError):
                while not received.endswith(b"\r\n\r\n") and not received.startswith(b"\x16"):
                    chunk = conn.recv(4096)  # an HTTP request's head, or a TLS client hello
                    if not chunk:
                        return
                    received += chunk
                self.requests.append(received)
                if self.respond is not None:
                    conn.sendall(self.respond(received))
                    return
                for piece in self.pieces:
                    if self._stop.wait(self.gap):
                        return
                    conn.sendall(piece)

    def close(self) -> None:
        self._stop.set()
        # The serving thread sees the stop within one accept timeout; the listener is closed only after it has
        # left accept(), never under it (that was an EBADF traceback in the thread at every teardown).
        self._thread.join(timeout=2)
        self._listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[list[bytes], float], RawServer]]:
    started: list[RawServer] = []

    def start(pieces: list[bytes], gap: float) -> RawServer:
        started.append(RawServer(pieces, gap))
        return started[-1]

    yield start
    for one in started:
        one.close()


def _one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


TRICKLE_LIMITS = FetchLimits(connect_timeout=1.0, read_timeout=1.0, deadline=2.0, max_bytes=MAX_BYTES)


def test_headers_trickled_a_byte_at_a_time_stop_at_the_deadline(
    raw_server: Callable[[list[bytes], float], RawServer], session: DownloadClient
) -> None:
    # A byte every 0.25 s never lets the read timeout (1 s) fire, and the headers never end: only the deadline
    # can stop it, and it must, although no body byte has arrived yet.
    headers = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + b"X-Slow: " + b"a" * 1000
    server = raw_server(_one_byte_at_a_time(headers), 0.25)
    started = time.monotonic()
    with pytest.raises(TransientFetchError) as excinfo:
        fetch_image(server.url(), session, TRICKLE_LIMITS)
    elapsed = time.monotonic() - started
    assert excinfo.value.reason == "deadline_exceeded"
    assert elapsed <= TRICKLE_LIMITS.deadline + 0.5, f"returned after {elapsed:.2f}s"


def test_a_body_trickled_without_a_length_stops_at_the_deadline_not_at_a_short_image(
    raw_server: Callable[[list[bytes], float], RawServer], session: DownloadClient
) -> None:
    # No Content-Length and no chunking: the body ends when the connection closes. Cutting the connection at
    # the deadline must not pass for the end of the image.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n"
    server = raw_server([head, *_one_byte_at_a_time(b"\xff" * 1000)], 0.1)
    started = time.monotonic()
    with pytest.raises(TransientFetchError) as excinfo:
        fetch_image(server.url(), session, TRICKLE_LIMITS)
    elapsed = time.monotonic() - started
    assert excinfo.value.reason == "deadline_exceeded"
    assert elapsed <= TRICKLE_LIMITS.deadline + 0.5, f"returned after {elapsed:.2f}s"


def test_a_connection_left_in_the_pool_is_not_cut_by_an_earlier_download_deadline(
    server: ImageServer, session: DownloadClient
) -> None:
    # The deadline of a finished download must not fire later on its pooled connection, now someone else's.
    body = images.product_bytes(8)
    fast = server.add("/pooled-fast.jpg", Route(body=body))
    slow = server.add("/pooled-slow.jpg", Route(body=body, trickle_seconds=1.5))
    limits = FetchLimits(connect_timeout=1.0, read_timeout=1.0, deadline=1.0, max_bytes=MAX_BYTES)
    assert fetch_image(fast, session, limits).data == body
    relaxed = FetchLimits(connect_timeout=1.0, read_timeout=1.0, deadline=5.0, max_bytes=MAX_BYTES)
    assert fetch_image(slow, session, relaxed).data == body


def test_a_tls_handshake_trickled_a_byte_at_a_time_stops_at_the_deadline(
    raw_server: Callable[[list[bytes], float], RawServer], session: DownloadClient
) -> None:
    # A handshake record announcing 16 kB that arrives a byte at a time: the client is inside the TLS handshake
    # (its socket object already detached by the ssl module) when the deadline comes, and is still cut. The
    # ssl module bounds a handshake by the connect timeout, so that one is longer than the deadline here.
    limits = FetchLimits(connect_timeout=6.0, read_timeout=1.0, deadline=2.0, max_bytes=MAX_BYTES)
    record = b"\x16\x03\x03\x40\x00" + b"\x02" * 16384
    server = raw_server(_one_byte_at_a_time(record), 0.25)
    started = time.monotonic()
    with pytest.raises(TransientFetchError) as excinfo:
        fetch_image(server.url().replace("http://", "https://"), session, limits)
    elapsed = time.monotonic() - started
    assert excinfo.value.reason == "deadline_exceeded"
    assert elapsed <= limits.deadline + 0.5, f"returned after {elapsed:.2f}s"


# ------------------------------------------------------------------------------------------ cookies, encodings
def _answer(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _header(request: bytes, name: str) -> str | None:
    for line in request.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.fixture
def cookie_server() -> Iterator[RawServer]:
    body = images.product_bytes(9)

    def respond(request: bytes) -> bytes:
        cookie = {"Set-Cookie": "tracker=abc; Path=/"}
        if request.startswith(b"GET /redirect"):
            return _answer("302 Found", {"Location": "/image.jpg", **cookie})
        return _answer("200 OK", {"Content-Type": "image/jpeg", **cookie}, body)

    server = RawServer([], 0, respond)
    yield server
    server.close()


def test_a_cookie_set_by_a_server_is_never_sent_back(cookie_server: RawServer, session: DownloadClient) -> None:
    fetch_image(cookie_server.url("/image.jpg"), session, LIMITS)
    fetch_image(cookie_server.url("/image.jpg"), session, LIMITS)
    assert len(cookie_server.requests) == 2
    assert [_header(request, "Cookie") for request in cookie_server.requests] == [None, None]
    assert len(session.cookies) == 0


def test_a_cookie_set_by_a_redirect_is_not_sent_to_the_next_hop(
    cookie_server: RawServer, session: DownloadClient
) -> None:
    fetched = fetch_image(cookie_server.url("/redirect"), session, LIMITS)
    assert fetched.final_url.endswith("/image.jpg")
    assert len(cookie_server.requests) == 2
    assert [_header(request, "Cookie") for request in cookie_server.requests] == [None, None]


def test_downloads_ask_for_the_bytes_as_stored(cookie_server: RawServer, session: DownloadClient) -> None:
    fetch_image(cookie_server.url("/image.jpg"), session, LIMITS)
    assert _header(cookie_server.requests[0], "Accept-Encoding") == "identity"


def test_a_gzip_bomb_is_cut_at_the_byte_cap_without_inflating_it(session: DownloadClient) -> None:
    # 256 MiB of zeros in 250 kB of gzip, sent although identity was asked for: the cap (1 MB) counts inflated
    # bytes, and the download must stop at it quickly, having inflated about that much and not the whole bomb.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()
    answer = _answer("200 OK", {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}, bomb)
    server = RawServer([], 0, lambda request: answer)
    try:
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        with pytest.raises(DownloadTooLarge) as excinfo:
            fetch_image(server.url(), session, LIMITS)
        elapsed = time.monotonic() - started
        growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    finally:
        server.close()
    assert excinfo.value.reason == "too_large"
    assert elapsed < 1.0, f"{elapsed:.2f}s"
    assert growth_mib < 64, f"peak RSS grew by {growth_mib:.0f} MiB"
