"""Jobs travel to the fetch workers in batches (LOOKALIKE_FETCH_BATCH a message), yet each job ends on its own:
sent on to the embedding stage, retried alone as its own message with the one backoff policy, or failed alone
with its reason. The tasks run in this process here (eagerly, against the test Redis), so no worker starts."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from lookalike.state.messages import Job, describe_jobs
from lookalike.state.queues import EMBED_QUEUE, FETCH_QUEUE
from lookalike.testing import images
from lookalike.testing.server import ImageServer, Route
from lookalike.worker import pipeline


def _messages(client: Any, queue: str) -> list[tuple[dict[str, Any], Any]]:
    """(headers, first argument) of every message waiting in ``queue``."""
    out = []
    for raw in client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        body = base64.b64decode(envelope["body"]) if envelope["properties"]["body_encoding"] == "base64" else raw
        args, _kwargs, _embed = json.loads(body)
        out.append((envelope["headers"], args[0]))
    return out


def _jobs(run_id: str, urls: list[str]) -> list[Job]:
    return [Job(run_id=run_id, product_id=f"fb-{i}", image_url=url, version=1) for i, url in enumerate(urls)]


def test_a_batch_sends_the_good_images_on_fails_the_missing_one_and_retries_the_flaky_one_alone(
    env: dict[str, str], image_server: ImageServer
) -> None:
    from lookalike.worker.tasks import fetch, fetch_batch

    good = [image_server.add(f"/fb/{i}.jpg", Route(body=images.product_bytes(700 + i))) for i in range(3)]
    missing = image_server.add("/fb/missing.jpg", Route(status=404))
    flaky = image_server.add("/fb/flaky.jpg", Route(body=images.product_bytes(710), fail_first=1, fail_status=503))
    ctx = pipeline.current_context()
    run_id = ctx.ledger.start_run("ingest", "test")
    jobs = _jobs(run_id, [*good, missing, flaky])

    result = fetch_batch.apply(args=[[job.to_message() for job in jobs]]).get()

    assert result == {"outcomes": {"sent_to_embed": 3, "failed": 1, "retried": 1}}
    sent = [item["job"]["image_url"] for _headers, batch in _messages(ctx.redis, EMBED_QUEUE) for item in batch]
    assert sorted(sent) == sorted(good)
    [failure] = ctx.failures.entries()
    assert (failure.image_url, failure.reason) == (missing, "http_404")
    assert ctx.ledger.run(run_id)["failed"] == 1
    # The flaky job waits as its own message: the single-job task, its first retry, with a countdown.
    [(headers, retried)] = _messages(ctx.redis, FETCH_QUEUE)
    # (Its countdown is drawn with full jitter, so it may be zero: then it carries no eta.)
    assert headers["task"] == "lookalike.fetch" and headers["retries"] == 1
    assert retried["image_url"] == flaky and retried["job_id"] == jobs[-1].job_id
    # Its retry goes through the single-job task's policy: this time the server answers, and the image goes on.
    assert fetch.apply(args=[retried], retries=1).get() == {"outcome": "sent_to_embed", "cached": False}
    sent = [item["job"]["image_url"] for _headers, batch in _messages(ctx.redis, EMBED_QUEUE) for item in batch]
    assert sorted(sent) == sorted([*good, flaky])
    assert len(ctx.failures.entries()) == 1


def test_a_flaky_image_in_a_batch_fails_at_once_when_no_retry_is_allowed(
    env: dict[str, str], image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.worker.tasks import fetch_batch

    from conftest import set_env

    set_env(monkeypatch, env, LOOKALIKE_FETCH_RETRIES="0")
    flaky = image_server.add("/fb/flaky0.jpg", Route(body=images.product_bytes(711), fail_first=5, fail_status=503))
    ctx = pipeline.current_context()
    jobs = _jobs(ctx.ledger.start_run("ingest", "test"), [flaky])

    assert fetch_batch.apply(args=[[job.to_message() for job in jobs]]).get() == {"outcomes": {"failed": 1}}
    assert [f.reason for f in ctx.failures.entries()] == ["http_503"]
    assert ctx.redis.llen(FETCH_QUEUE) == 0


def test_a_batch_handed_back_goes_on_as_one_message_per_job(
    env: dict[str, str], image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.worker import tasks

    # A batch that comes back (its worker died) may hold the job that killed it: each job is counted on its own.
    monkeypatch.setattr(tasks, "handed_back", lambda task: True)
    ctx = pipeline.current_context()
    jobs = _jobs("r", [f"{image_server.base_url}/fb/split{i}.jpg" for i in range(3)])

    assert tasks.fetch_batch.apply(args=[[job.to_message() for job in jobs]]).get() == {"split": 3}
    split = _messages(ctx.redis, FETCH_QUEUE)
    assert [headers["task"] for headers, _ in split] == ["lookalike.fetch"] * 3
    assert sorted(job["job_id"] for _, job in split) == sorted(job.job_id for job in jobs)
    assert image_server.hits() == 0  # nothing downloaded: each job is fetched by its own message


def test_the_producer_publishes_jobs_in_batches_and_counts_each_message_as_a_full_one(
    env: dict[str, str], redis_client: Any
) -> None:
    from lookalike.app.gateway import CeleryPublisher
    from lookalike.worker.app import app

    jobs = _jobs("r", [f"http://127.0.0.1:1/{i}.jpg" for i in range(40)])
    publisher = CeleryPublisher(app, redis_client, batch=16)
    publisher.publish_jobs(jobs)
    messages = _messages(redis_client, FETCH_QUEUE)
    # LPUSH, BRPOP: the oldest message is at the list's tail.
    batches = [batch for _headers, batch in reversed(messages)]
    assert [len(batch) for batch in batches] == [16, 16, 8]
    assert [job["job_id"] for batch in batches for job in batch] == [job.job_id for job in jobs]
    assert [headers["argsrepr"] for headers, _ in reversed(messages)][-1] == describe_jobs(jobs[32:])
    assert publisher.fetch_depth() == 48


def test_a_fetch_pool_has_threads_for_two_rounds_of_batches_and_one_per_job_without_batches() -> None:
    from lookalike.worker.runner import fetch_pool_threads

    assert fetch_pool_threads(256, 16) == 32
    assert fetch_pool_threads(256, 1) == 256
    assert fetch_pool_threads(16, 16) == 2
    assert fetch_pool_threads(10, 64) == 2
    assert fetch_pool_threads(1, 16) == 1


def test_a_bug_met_by_one_job_of_a_batch_fails_that_job_alone_with_the_error_named(
    env: dict[str, str], image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.worker.tasks import fetch_batch

    good = image_server.add("/fb/ok.jpg", Route(body=images.product_bytes(720)))
    cursed = image_server.add("/fb/cursed.jpg", Route(body=images.product_bytes(721)))
    real = pipeline.fetch_stage

    def fetch_stage(ctx: Any, job: Job) -> Any:
        if job.image_url == cursed:
            raise RuntimeError("a bug")
        return real(ctx, job)

    monkeypatch.setattr(pipeline, "fetch_stage", fetch_stage)
    ctx = pipeline.current_context()
    jobs = _jobs(ctx.ledger.start_run("ingest", "test"), [good, cursed])

    assert fetch_batch.apply(args=[[job.to_message() for job in jobs]]).get() == {
        "outcomes": {"sent_to_embed": 1, "failed": 1}
    }
    assert [(f.image_url, f.reason) for f in ctx.failures.entries()] == [(cursed, "internal_RuntimeError")]


def test_a_batch_of_jobs_names_its_jobs_and_its_age_to_whoever_records_or_watches_it() -> None:
    from lookalike.state.messages import jobs_in, message_time

    jobs = _jobs("r", ["http://127.0.0.1:1/a.jpg", "http://127.0.0.1:1/b.jpg"])
    assert [job.job_id for job in jobs_in([job.to_message() for job in jobs])] == [job.job_id for job in jobs]
    assert message_time([job.to_message() for job in jobs]) == min(job.enqueued_at for job in jobs)
    assert jobs_in(["not a job"]) == []


def test_a_batch_that_finds_the_broker_full_goes_back_whole_and_fails_nothing(
    env: dict[str, str], image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis
    from celery.exceptions import Reject

    from lookalike.worker.tasks import fetch_batch

    def fetch_stage(ctx: Any, job: Job) -> Any:
        raise redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")

    monkeypatch.setattr(pipeline, "fetch_stage", fetch_stage)
    ctx = pipeline.current_context()
    jobs = _jobs(ctx.ledger.start_run("ingest", "test"), [f"{image_server.base_url}/fb/full{i}.jpg" for i in range(2)])

    result = fetch_batch.apply(args=[[job.to_message() for job in jobs]])
    assert result.state == "REJECTED", result.state
    assert isinstance(result.result, Reject) and result.result.requeue
    assert ctx.failures.entries() == []
    assert not ctx.ledger.run(jobs[0].run_id).get("failed")


def test_an_embedding_batch_that_would_keep_one_process_busy_shares_its_second_half_when_none_waits() -> None:
    from lookalike.worker.tasks import SHARE_ABOVE_SECONDS, share_point

    assert share_point(32, 0.064, others_waiting=False) == 16  # int8 ViT-B/32 cost: 2 s for one process
    assert share_point(5, 0.064, others_waiting=False) == 5  # 0.3 s: not worth a message
    assert share_point(32, 0.002, others_waiting=False) == 32  # the tiny model
    assert share_point(32, 0.064, others_waiting=True) == 32  # the siblings have work already
    assert share_point(1, 10.0, others_waiting=False) == 1
    assert share_point(3, SHARE_ABOVE_SECONDS, others_waiting=False) == 2


def test_a_shared_half_goes_back_to_the_embed_queue_and_only_when_it_is_empty(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.state.messages import PreparedImage
    from lookalike.worker import tasks

    ctx = pipeline.current_context()
    model = ctx.embedder
    monkeypatch.setattr(model, "seconds", 2.0)  # 0.5 s an image, as this process measured it
    monkeypatch.setattr(model, "items", 4)
    jobs = _jobs("r", [f"http://127.0.0.1:1/share{i}.jpg" for i in range(4)])
    items = [PreparedImage(job, f"{i:064x}", image=images.product_bytes(i)).to_message() for i, job in enumerate(jobs)]
    cached = PreparedImage(_jobs("r", ["http://127.0.0.1:1/cached.jpg"])[0], "c" * 64, vector="AAAA").to_message()

    kept = tasks._share_with_idle_siblings(ctx, [*items, cached])
    assert [item["job"]["job_id"] for item in kept if "image" in item] == [job.job_id for job in jobs[:2]]
    assert cached in kept  # a cached vector costs nothing: it stays
    [(headers, shared)] = _messages(ctx.redis, EMBED_QUEUE)
    assert headers["task"] == "lookalike.embed"
    assert [item["job"]["job_id"] for item in shared] == [job.job_id for job in jobs[2:]]

    # Another batch waits: the siblings have work, this process keeps its whole batch.
    assert tasks._share_with_idle_siblings(ctx, items) == items
    assert len(_messages(ctx.redis, EMBED_QUEUE)) == 1
