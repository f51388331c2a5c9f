"""A real HTTP image server on 127.0.0.1 for tests and benchmarks: latency, faults and request counts.

Routes map a path to a :class:`Route`: bytes with a content type, a status code, a number of failures before
success, a redirect, a slow trickle. Every request is counted per path, so tests can assert that a price
change downloaded nothing and that a 500-then-200 URL was fetched twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "image/jpeg"
    status: int = 200
    fail_first: int = 0  # answer ``fail_status`` this many times before succeeding
    fail_status: int = 500
    redirect_to: str | None = None
    trickle_seconds: float = 0.0  # spread the body over this long (a slow server)
    chunked: bool = False  # no Content-Length: the size is known only while streaming
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        path = self.path.split("?", 1)[0]
        with server.lock:
            server.hits[path] += 1
            seen = server.hits[path]
            route = server.routes.get(path)
        if server.latency:
            time.sleep(server.latency)
        if route is None:
            self._send(404, b"not found", "text/plain")
            return
        if seen <= route.fail_first:
            self._send(route.fail_status, b"try again", "text/plain", route.headers)
            return
        if route.redirect_to:
            self.send_response(302)
            self.send_header("Location", route.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route.status != 200:
            self._send(route.status, b"error", "text/plain", route.headers)
            return
        if route.chunked:
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for start in range(0, len(route.body), 65536):
                    piece = route.body[start : start + 65536]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if route.trickle_seconds:
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            pieces = 20
            step = max(1, len(route.body) // pieces)
            try:
                for start in range(0, len(route.body), step):
                    self.wfile.write(route.body[start : start + step])
                    self.wfile.flush()
                    time.sleep(route.trickle_seconds / pieces)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self._send(200, route.body, route.content_type, route.headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish mid-request (a killed worker, a refused download) are expected here.
        pass

    def __init__(self, latency: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.latency = latency


class ImageServer:
    """``with ImageServer(latency_ms=100) as server: server.add("/a.jpg", Route(body=...))``"""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self._server = _Server(latency_ms / 1000.0)
        self._thread = threading.Thread(target=self._server.serve_forever, name="image-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, route: Route) -> str:
        with self._server.lock:
            self._server.routes[path] = route
        return self.url(path)

    def hits(self, path: str | None = None) -> int:
        with self._server.lock:
            return sum(self._server.hits.values()) if path is None else self._server.hits[path]

    def reset_hits(self) -> None:
        with self._server.lock:
            self._server.hits.clear()

    def set_latency(self, latency_ms: float) -> None:
        self._server.latency = latency_ms / 1000.0

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
