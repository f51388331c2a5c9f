"""The event stream under hostile or broken entries: every entry ends applied, stale or rejected with a reason, the
listener never dies on content (only on Redis failing, with nothing acknowledged), events are size-checked before
they are parsed, and the stream stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
import redis

from lookalike.producer import events as events_module
from lookalike.producer.enqueue import Backpressure
from lookalike.producer.events import DELETED, UPSERTED, EventRejected, parse_event, publish_event
from lookalike.producer.listener import EventListener, rejected_events
from lookalike.state.messages import Job
from lookalike.worker import pipeline

from conftest import LOOKALIKE, set_env


def upsert(product_id: str, version: int = 1, **product: Any) -> dict[str, Any]:
    body = {"id": product_id, "name": product_id.title(), "image_urls": [f"https://cdn.example/{product_id}.jpg"]}
    return {"type": UPSERTED, "version": version, "product": {**body, **product}}


VALID = [upsert("good-1"), upsert("good-2", price=3.5), {"type": DELETED, "version": 4, "product_id": "good-3"}]


def listen(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOOKALIKE, "listen", "--stop-when-idle", "1", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def add_entries(client: redis.Redis, raws: Sequence[str | bytes]) -> str:
    stream = pipeline.current_context().settings.events_stream
    for raw in raws:
        client.xadd(stream, {"event": raw})
    return stream


def rejected() -> list[dict[str, Any]]:
    ctx = pipeline.current_context()
    return rejected_events(ctx.redis, ctx.settings.key("events", "rejected"))


def assert_the_valid_events_were_applied(outcomes: dict[str, int] | None = None) -> None:
    ctx = pipeline.current_context()
    for product_id in ("good-1", "good-2"):
        state = ctx.registry.get(product_id)
        assert state is not None and not state.deleted, product_id
    stats = ctx.ledger.stats()
    # good-3 was never seen: its delete has nothing to delete.
    expected = outcomes or {"new": 2, "missing": 1}
    assert {name: stats.get(f"events:{name}", 0) for name in (*expected, "stale")} == {**expected, "stale": 0}
    assert stats["events:handled"] == 3
    pending = ctx.redis.xpending(ctx.settings.events_stream, ctx.settings.events_group)["pending"]
    assert pending == 0, "an entry was left unacknowledged"


# ------------------------------------------------------------------------------------------ poison entries
DEEP = "[" * 30_000 + "]" * 30_000  # under the size limit; json.loads raised RecursionError on it
POISONS = {
    "nested past the recursion limit": (DEEP, "too_deep", None),
    "nested and huge (issue #12's example)": ("[" * 100_000 + "]" * 100_000, "too_large", None),
    "a lone surrogate in a delete's id": (
        '{"type": "product.deleted", "version": 1, "product_id": "p\\ud800"}',
        "invalid_field",
        "product_id",
    ),
    "a lone surrogate in a product id": (json.dumps(upsert("p\ud800")), "invalid_field", "product.id"),
    "a lone surrogate in a name": (json.dumps(upsert("x", name="a\udfffb")), "invalid_field", "product.name"),
    "a lone surrogate in an image URL": (
        json.dumps(upsert("x", image_urls=["https://cdn.example/\ud83d.jpg"])),
        "invalid_field",
        "product.image_urls",
    ),
    "a surrogate encoded as UTF-8 bytes": (
        b'{"type": "product.deleted", "version": 1, "product_id": "p\xed\xa0\x80"}',
        "invalid_json",
        None,
    ),
}


@pytest.mark.parametrize("poison", POISONS.values(), ids=list(POISONS))
def test_a_poison_entry_is_rejected_with_its_reason_and_the_events_behind_it_are_applied(
    poison: tuple[str | bytes, str, str | None], env, redis_client
):
    raw, reason, field = poison
    add_entries(redis_client, [raw, *(json.dumps(event) for event in VALID)])

    done = listen(env)

    assert done.returncode == 0, done.stderr[-3000:]
    assert [(item["reason"], item["field"]) for item in rejected()] == [(reason, field)]
    assert_the_valid_events_were_applied()
    assert pipeline.current_context().ledger.stats()[f"events:failed:{reason}"] == 1


def test_a_listener_restarted_with_a_poison_entry_already_pending_rejects_it_and_goes_on(env, redis_client):
    settings = pipeline.current_context().settings
    redis_client.xgroup_create(settings.events_stream, settings.events_group, id="0", mkstream=True)
    add_entries(redis_client, [DEEP, *(json.dumps(event) for event in VALID)])
    # A listener read the poison and died on it: the entry is pending for that consumer, read first on restart.
    redis_client.xreadgroup(settings.events_group, "listener-a", {settings.events_stream: ">"}, count=1)
    assert redis_client.xpending(settings.events_stream, settings.events_group)["pending"] == 1

    done = listen(env, "--consumer", "listener-a")

    assert done.returncode == 0, done.stderr[-3000:]
    assert [item["reason"] for item in rejected()] == ["too_deep"]
    assert_the_valid_events_were_applied()


# ------------------------------------------------------------------------------------ the last-resort guard
class FakePublisher:
    """Collects what would be enqueued; raises ``error`` when asked to publish the ``cursed`` product's jobs."""

    def __init__(self, error: Exception | None = None, cursed: str = "cursed") -> None:
        self.error = error
        self.cursed = cursed
        self.jobs: list[Job] = []

    def publish_jobs(self, jobs: Sequence[Job]) -> None:
        if self.error is not None and any(job.product_id == self.cursed for job in jobs):
            raise self.error
        self.jobs.extend(jobs)

    def publish_reconcile(self, product_ids: Sequence[str], run_id: str) -> None:
        pass

    def fetch_depth(self) -> int:
        return 0


def in_process_listener(publisher: FakePublisher) -> EventListener:
    ctx = pipeline.current_context()
    return EventListener(
        ctx.redis,
        stream=ctx.settings.events_stream,
        group=ctx.settings.events_group,
        consumer="in-process",
        registry=ctx.registry,
        ledger=ctx.ledger,
        publisher=publisher,
        backpressure=Backpressure(1000),
        rejected_key=ctx.settings.key("events", "rejected"),
        block_ms=100,
    )


def test_an_entry_that_makes_enqueuing_raise_is_rejected_as_internal_and_its_batch_is_still_applied(env, redis_client):
    add_entries(redis_client, [json.dumps(VALID[0]), json.dumps(upsert("cursed")), *map(json.dumps, VALID[1:])])
    publisher = FakePublisher(ValueError("the publisher chokes on this product"))

    in_process_listener(publisher).run(threading.Event(), stop_when_idle=0.3)  # returns: it did not die

    [record] = rejected()
    assert record["reason"] == "internal_ValueError" and "chokes" in record["detail"]
    assert "cursed" in record["event"]
    # The failed batch attempt had registered them: applied again one by one they are replays, done again in full
    # (as after a listener crash; a replayed tombstone counts as deleted).
    assert_the_valid_events_were_applied({"redone": 2, "deleted": 1})
    assert sorted({job.product_id for job in publisher.jobs}) == ["good-1", "good-2"]
    stats = pipeline.current_context().ledger.stats()
    assert stats["events:failed"] == 1 and stats["events:failed:internal_ValueError"] == 1


def test_an_entry_that_makes_parsing_raise_is_rejected_as_internal(env, redis_client, monkeypatch):
    real_parse = parse_event

    def parse_with_a_bug(raw: bytes) -> Any:
        if b"cursed" in raw:
            raise KeyError("a bug in validation")
        return real_parse(raw)

    monkeypatch.setattr("lookalike.producer.listener.parse_event", parse_with_a_bug)
    add_entries(redis_client, [json.dumps(upsert("cursed")), *map(json.dumps, VALID)])

    in_process_listener(FakePublisher()).run(threading.Event(), stop_when_idle=0.3)

    assert [item["reason"] for item in rejected()] == ["internal_KeyError"]
    assert_the_valid_events_were_applied()


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("Redis went away"), redis.exceptions.BusyLoadingError("loading"), "kombu"],
    ids=["redis connection error", "redis loading", "broker error raised from a redis connection error"],
)
def test_redis_failing_while_handling_stops_the_listener_with_nothing_acknowledged(error: Any, env, redis_client):
    if error == "kombu":
        try:
            raise kombu.exceptions.OperationalError("Error 111 connecting") from redis.ConnectionError("refused")
        except kombu.exceptions.OperationalError as wrapped:
            error = wrapped
    add_entries(redis_client, [json.dumps(upsert("cursed")), *map(json.dumps, VALID)])

    with pytest.raises(type(error)):
        in_process_listener(FakePublisher(error)).run(threading.Event(), stop_when_idle=0.3)

    settings = pipeline.current_context().settings
    assert redis_client.xpending(settings.events_stream, settings.events_group)["pending"] == 4
    assert rejected() == []


# ---------------------------------------------------------------------------------------------- size limit
def big_event(size: int) -> str:
    """A valid event of about ``size`` bytes (a long description, which a product may legitimately have)."""
    return json.dumps(upsert("big", description="d" * size))


def test_an_event_over_the_size_limit_is_rejected_as_too_large_before_it_is_parsed(env, monkeypatch):
    def no_parsing(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("json.loads was called on an oversized event")

    raw = big_event(100 * 1024)  # over the 64 KiB default
    with monkeypatch.context() as patch:
        patch.setattr(events_module.json, "loads", no_parsing)
        for text in (raw, raw.encode()):
            with pytest.raises(EventRejected) as refused:
                parse_event(text)
            assert refused.value.reason == "too_large" and refused.value.stage == "event"
    assert parse_event(big_event(50 * 1024)).product.id == "big"  # under the limit: fine

    # Characters are not bytes: 40,000 three-byte characters are 120,000 bytes.
    with pytest.raises(EventRejected, match="too_large"):
        parse_event(json.dumps(upsert("wide", description="\u20ac" * 40_000), ensure_ascii=False))


def test_the_size_limit_is_a_setting_and_publishing_honours_it(env, monkeypatch, redis_client):
    set_env(monkeypatch, env, LOOKALIKE_EVENTS_MAX_BYTES="2048")
    with pytest.raises(EventRejected, match="too_large"):
        parse_event(big_event(3000))
    with pytest.raises(EventRejected, match="too_large"):  # a dict from Python code: its JSON is measured
        publish_event(json.loads(big_event(3000)), client=redis_client, stream="lookalike:events")
    assert redis_client.xlen("lookalike:events") == 0


def test_the_listener_and_the_events_command_reject_an_oversized_event(env, cli, redis_client, tmp_path):
    add_entries(redis_client, [big_event(100 * 1024), *(json.dumps(event) for event in VALID)])
    done = listen(env)
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = rejected()
    assert record["reason"] == "too_large" and len(record["event"]) <= 2000
    assert_the_valid_events_were_applied()

    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join([json.dumps(VALID[0]), big_event(100 * 1024), json.dumps(VALID[1])]) + "\n")
    result = cli("events", str(lines), "--json")
    assert result.code == 1
    assert result.json()["published"] == 2 and result.json()["rejected"] == 1
    assert "line 2: not published: too_large" in result.stderr


# ---------------------------------------------------------------------------------------------- trimming
def test_the_event_stream_stays_bounded_however_many_events_are_published(
    env, cli, monkeypatch, redis_client, tmp_path
):
    set_env(monkeypatch, env, LOOKALIKE_EVENTS_STREAM_MAXLEN="100")
    stream = pipeline.current_context().settings.events_stream
    for version in range(1, 2001):
        publish_event({"type": DELETED, "version": version, "product_id": "p"}, client=redis_client, stream=stream)
    # MAXLEN ~ trims whole stream nodes (100 entries each by default): at least 100 kept, never much more.
    assert 100 <= redis_client.xlen(stream) <= 200
    newest = redis_client.xrevrange(stream, count=1)[0][1][b"event"]
    assert json.loads(newest)["version"] == 2000, "trimming dropped the newest events instead of the oldest"

    lines = tmp_path / "events.jsonl"
    lines.write_text(
        "".join(json.dumps({"type": DELETED, "version": v, "product_id": "q"}) + "\n" for v in range(1000))
    )
    assert cli("events", str(lines), "--json").code == 0
    assert 100 <= redis_client.xlen(stream) <= 200


def test_a_line_that_is_not_utf8_is_rejected_alone_by_the_events_command(
    cli: Any, env: dict[str, str], tmp_path: Path
) -> None:
    events = tmp_path / "mixed.jsonl"
    good = json.dumps({"type": "product.deleted", "version": 3, "product_id": "sku-ok"}).encode()
    events.write_bytes(b'{"type": "product.deleted", "version": 3, "product_id": "caf\xe9"}\n' + good + b"\n")
    result = cli("events", str(events), "--json")
    assert result.code == 1, result.stderr
    assert result.json()["published"] == 1 and result.json()["rejected"] == 1
    assert "line 1: not published: invalid_json" in result.stderr
