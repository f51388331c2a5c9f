"""Worker processes started from this machine: `lookalike worker`, and the local workers an ingest starts for
itself when none is running."""

from __future__ import annotations

from typing import Any

from lookalike.app.broker import Note, require_broker, safe_url, worker_environment
from lookalike.config.settings import Settings
from lookalike.state.errors import Misconfigured, StoreLocked


def start_local_workers(settings: Settings, note: Note) -> Any:
    """Workers for the duration of one command; their log (job outcomes included) goes to a file."""
    from lookalike.worker.runner import WorkerGroup, parse_queues, plan_pools

    pools = plan_pools(settings, parse_queues(None), concurrency=None, fetch_threads=None)
    log_path = settings.qdrant_path.parent / "local-workers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    group = WorkerGroup(
        pools, loglevel="WARNING", log_path=log_path, env=worker_environment(settings), **_supervision(settings)
    )
    group.start()
    described = ", ".join(f"{p.name} ({p.pool} x{p.concurrency})" for p in pools)
    note(f"no worker is running: started local workers for this command: {described}; their log: {log_path}")
    return group


def start_worker(
    settings: Settings,
    *,
    queues: str | None,
    concurrency: int | None,
    fetch_threads: int | None,
    loglevel: str,
    note: Note,
) -> int:
    """`lookalike worker`: start the pools for the chosen queues and supervise them until stopped; the exit
    code. A second worker on an embedded store already owned runs fetch and embed only."""
    from lookalike.state.queues import INDEX_QUEUE, QUERY_QUEUE
    from lookalike.worker.runner import WorkerGroup, parse_queues, plan_pools
    from lookalike.worker.store import open_store

    url = require_broker(settings)
    chosen = parse_queues(queues)
    if settings.uses_embedded_store and chosen & {INDEX_QUEUE, QUERY_QUEUE}:
        try:
            open_store(settings, lock_wait=0).close()
        except StoreLocked as exc:
            if queues:  # the store queues were asked for by name: the user has to choose others
                raise Misconfigured(str(exc)) from exc
            note(
                f"the embedded store {settings.qdrant_path} is owned by another worker: this one runs fetch and "
                "embed only (use a Qdrant server to run several store workers)"
            )
            chosen -= {INDEX_QUEUE, QUERY_QUEUE}
    # A model that cannot load is ModelUnavailable: exit 3, as for `ingest --wait` and `search` (one missing
    # thing, one exit code in every command).
    check_model(settings)
    pools = plan_pools(settings, chosen, concurrency=concurrency, fetch_threads=fetch_threads)
    env = worker_environment(settings)
    if fetch_threads:  # the fetch processes size their download threads from the setting
        env["LOOKALIKE_FETCH_CONCURRENCY"] = str(fetch_threads)
    group = WorkerGroup(pools, loglevel=loglevel, env=env, **_supervision(settings))
    group.start(handle_signals=True)
    note(
        "started "
        + ", ".join(f"{p.name} pool ({p.pool} x{p.concurrency}) on {','.join(p.queues)}" for p in pools)
        + f" against {safe_url(url)}; Ctrl-C stops them"
    )
    return group.supervise()


def _supervision(settings: Settings) -> dict[str, Any]:
    """What a worker group needs to explain a pool's death: the embedded store's directory (a SIGBUS there is a
    full disk) and where to say that a pool stopped for good."""
    from lookalike.state.conditions import Conditions
    from lookalike.state.connection import redis_client

    return {
        "store_path": settings.qdrant_path if settings.uses_embedded_store else None,
        "conditions": Conditions(redis_client(settings), settings.key_prefix),
    }


def check_model(settings: Settings) -> None:
    """Fail before starting anything when the model cannot load (offline without a local directory...)."""
    from lookalike.worker.embed import Embedder

    Embedder.for_settings(settings)
