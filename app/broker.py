"""This process's broker: resolved once, checked, and its client-library failures said in one line.

Which broker a command uses (configured, the default address, or an embedded one) is decided by
:func:`use_broker`; what it resolved is a value (:class:`~lookalike.worker.embedded.Runtime`) the command
passes down. A failure of the Redis or kombu client anywhere in a command is turned into lookalike's own
errors by :func:`as_lookalike_error`, so the adapters never import either library.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from lookalike.config.settings import Settings
from lookalike.state.errors import BrokerUnreachable, Misconfigured
from lookalike.worker.embedded import Runtime, broker_problem, resolve_broker

Note = Callable[[str], None]


def use_broker(note: Note, *, start: bool = True, share: bool = False) -> Runtime:
    """This command's broker, resolved the way every command resolves it (see ``resolve_broker``), and checked.

    An embedded broker this command started stops when the command ends; ``share`` (long-running commands)
    lets other commands use it meanwhile."""
    runtime = resolve_broker(start=start, share=share)
    atexit.register(runtime.close)
    for message in runtime.notes:
        note(message)
    require_broker(runtime.settings)
    return runtime


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return " ".join(safe_url(word) if "://" in word else word for word in text.split())
