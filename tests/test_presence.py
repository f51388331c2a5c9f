"""Which workers are alive comes from keys they refresh, so Celery's remote control stays off."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from lookalike.config.settings import get_settings
from lookalike.state.presence import TTL_SECONDS


def test_workers_are_listed_without_remote_control_and_drop_out_when_killed(
    env: dict[str, str], start_worker: Any
) -> None:
    from lookalike.app.gateway import live_workers
    from lookalike.worker.app import create_app

    app = create_app(get_settings())
    worker = start_worker()
    alive = live_workers(app)
    assert {q for queues in alive.values() for q in queues} >= {
        "lookalike.fetch",
        "lookalike.index",
        "lookalike.encode",
    }
    # Remote control is off: no worker answers a broadcast (nobody with broker access can stop or resize them).
    assert not app.control.inspect(timeout=1.0).ping()

    os.killpg(worker.process.pid, signal.SIGKILL)  # no shutdown handler runs: the keys must expire by themselves
    worker.process.wait()
    deadline = time.monotonic() + TTL_SECONDS + 5
    while live_workers(app) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_workers(app) == {}


def test_a_worker_that_stops_cleanly_leaves_at_once(env: dict[str, str], start_worker: Any) -> None:
    from lookalike.app.gateway import live_workers
    from lookalike.worker.app import create_app

    app = create_app(get_settings())
    worker = start_worker()
    assert live_workers(app)
    assert worker.stop() == 0
    assert live_workers(app) == {}
