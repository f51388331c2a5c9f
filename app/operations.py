"""Watching a running system: Flower on lookalike's workers and the Prometheus exporter."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lookalike.app.broker import Note, safe_url, worker_environment
from lookalike.app.services import Services
from lookalike.config.settings import Settings
from lookalike.state.errors import Misconfigured

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def flower_login(settings: Settings, address: str) -> str:
    """Flower's ``user:password`` ('' for none); refuses a malformed one, and no login off loopback unless the
    settings allow it."""
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    if auth and ":" not in auth:
        raise Misconfigured("LOOKALIKE_FLOWER_BASIC_AUTH must be user:password")
    if not auth and address not in LOOPBACK and not settings.flower_allow_unauthenticated:
        raise Misconfigured(
            f"refusing to serve Flower on {address} without a login: set LOOKALIKE_FLOWER_BASIC_AUTH=user:password "
            "(or LOOKALIKE_FLOWER_ALLOW_UNAUTHENTICATED=true if something in front of it authenticates)"
        )
    return auth


def start_flower(settings: Settings, port: int, address: str | None, note: Note) -> None:
    """Replace this process with Flower on the lookalike app. The login travels in FLOWER_BASIC_AUTH and the
    broker this command resolved in LOOKALIKE_BROKER_URL, in the new process's environment (never its command
    line)."""
    address = address or settings.flower_address
    auth = flower_login(settings, address)
    url = settings.broker_url.get_secret_value()
    env = {k: v for k, v in worker_environment(settings).items() if not k.startswith("FLOWER_")}
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
    note(f"Flower on http://{address}:{port}/ ({'basic auth' if auth else 'NO LOGIN'}) for {safe_url(url)}")
    argv = [sys.executable, "-m", "celery", "-A", "lookalike.worker.app", "flower", f"--port={port}"]
    argv.append(f"--address={address}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def serve_metrics_forever(services: Services, address: str, port: int) -> None:
    """Serve /metrics until SIGINT/SIGTERM."""
    import signal
    import threading

    from lookalike.state.queues import ALL_QUEUES
    from lookalike.worker.metrics import serve_metrics

    try:
        server = serve_metrics(services.state, ALL_QUEUES, address, port)
    except OSError as exc:  # the port is taken, the address is not this machine's...
        raise Misconfigured(str(exc)) from exc
    services.note(f"Prometheus metrics on http://{address}:{port}/metrics")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


def listening_socket(host: str, port: int) -> Any:
    """A TCP socket bound to ``host:port`` and listening, for a server to take over: a port in use or an
    address this machine does not have fails here (OSError), before anything says it is serving."""
    import socket

    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


def serve_directory(directory: Path, host: str, port: int, note: Note) -> None:
    """Serve ``directory``'s files read-only until SIGINT or SIGTERM; bind errors are OSError, raised before
    anything says it is serving."""
    import functools
    import signal
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # one line per image would drown the terminal
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    handler = functools.partial(Quiet, directory=str(directory.resolve()))
    server = Server((host, port), handler)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="images", daemon=True)
    thread.start()
    note(f"serving {directory} on http://{host}:{port}/ (Ctrl-C stops)")
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
