"""Catalogue change events: publish a file of them (`lookalike events FILE`), list the rejected ones, and
consume the stream (`lookalike listen`), enqueueing through the gateway's publisher."""

from __future__ import annotations

import sys
from typing import Any

from lookalike.app.services import Services


def run_listener(services: Services, consumer: str | None, stop_when_idle: float | None, batch: int) -> None:
    """Consume the event stream until SIGINT/SIGTERM (or ``stop_when_idle`` seconds without news)."""
    import signal
    import socket
    import threading

    from lookalike.producer.enqueue import Backpressure
    from lookalike.producer.listener import EventListener

    ctx, settings, note = services.state, services.settings, services.note
    listener = EventListener(
        ctx.redis,
        stream=settings.events_stream,
        group=settings.events_group,
        consumer=consumer or socket.gethostname(),
        registry=ctx.registry,
        ledger=ctx.ledger,
        publisher=services.gateway.publisher(ctx.redis),
        backpressure=Backpressure(settings.fetch_high_water),
        rejected_key=settings.key("events", "rejected"),
        claim_idle=settings.events_claim_idle,
        batch=batch,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    note(f"listening on stream {settings.events_stream} (group {settings.events_group}, consumer {listener.consumer})")

    def report(batch: Any) -> None:
        outcomes = ", ".join(f"{n} {name}" for name, n in sorted(batch.outcomes.items()))
        rejected = sum(batch.rejected.values())
        note(
            f"{batch.entries} events: {outcomes or 'nothing to do'}; {batch.jobs} images enqueued; {rejected} rejected"
        )

    listener.run(stop, stop_when_idle=stop_when_idle, on_batch=report)


def publish_events_file(services: Services, file: str) -> dict[str, Any]:
    """Publish every valid line of ``file`` ('-': stdin); an invalid line is said and counted, not published."""
    from lookalike.producer.events import EventRejected, parse_event, publish_event

    ctx = services.state
    stream = services.settings.events_stream
    published = rejected = 0
    # Bytes, not text: a line that is not UTF-8 is that line's error (invalid_json), not the end of the file.
    handle = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                publish_event(parse_event(line), client=ctx.redis, stream=stream)
                published += 1
            except EventRejected as exc:
                rejected += 1
                services.note(f"line {number}: not published: {exc}")
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    return {"stream": stream, "published": published, "rejected": rejected}


def list_rejected_events(services: Services) -> list[dict[str, Any]]:
    from lookalike.producer.listener import rejected_events

    return rejected_events(services.state.redis, services.settings.key("events", "rejected"))
