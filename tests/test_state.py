"""Fast unit tests of the shared state and the stages, against the real Redis and no worker processes: the
registry's compare-and-set, the ledger's exactly-once counting, the fetch batcher, sync planning, and the index
stage over an in-memory store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike.producer.product import Product
from lookalike.producer.sync import plan_deletes, plan_retries, plan_upserts, state_of
from lookalike.state.failures import Failure
from lookalike.state.ledger import Outcome, finished
from lookalike.state.messages import EmbeddedPoint, Job, PreparedImage, encode_vector, point_id_for
from lookalike.state.outcomes import CHANGED, DELETED, INDEXED, MISSING, NEW, STALE, SUPERSEDED, UNCHANGED
from lookalike.state.process import ProcessCache
from lookalike.state.registry import Applied, ProductState, Stale
from lookalike.worker import pipeline
from lookalike.worker.batcher import Batcher
from lookalike.worker.store import EdgeStore


def product(pid: str = "p1", *, price: str = "$10.00", images: tuple[str, ...] = ("http://img/a.jpg",)) -> Product:
    return Product.build(id=pid, name=f"Product {pid}", image_urls=list(images), price=price)


# ---------------------------------------------------------------------------------------------- registry
def test_the_registry_applies_a_newer_version_and_refuses_an_older_one(env: dict[str, str]) -> None:
    registry = pipeline.current_context().registry
    first = registry.apply("p1", state_of(product(), 2))
    assert isinstance(first, Applied) and first.previous is None
    older = registry.apply("p1", state_of(product(price="$1.00"), 1))
    assert isinstance(older, Stale) and older.current.version == 2
    newer = registry.apply("p1", state_of(product(price="$3.00"), 3))
    assert isinstance(newer, Applied) and newer.previous is not None and newer.previous.version == 2
    assert newer.previous_unfinished, "version 2 was never settled"
    registry.settle([("p1", 3)])
    assert registry.pending() == {}
    stored = registry.get("p1")
    assert stored is not None and stored.payload["price"] == "$3.00"


def test_the_same_version_delivered_again_before_it_was_settled_is_a_replay(env: dict[str, str]) -> None:
    registry = pipeline.current_context().registry
    registry.apply("p1", state_of(product(), 5))
    again = registry.apply("p1", state_of(product(), 5))
    assert isinstance(again, Stale) and again.replay
    registry.settle([("p1", 5)])
    settled = registry.apply("p1", state_of(product(), 5))
    assert isinstance(settled, Stale) and not settled.replay


# ------------------------------------------------------------------------------------------------ ledger
def test_the_ledger_counts_an_outcome_once_however_often_it_is_recorded(env: dict[str, str]) -> None:
    ledger = pipeline.current_context().ledger
    run_id = ledger.start_run("test", "unit")
    ledger.add(run_id, {"enqueued": 2})
    for _ in range(3):
        ledger.record([Outcome("job-1", run_id, INDEXED), Outcome("job-2", run_id, "failed", reason="http_404")])
    run = ledger.run(run_id)
    assert run is not None
    assert (run["indexed"], run["failed"], run["failed:http_404"], finished(run)) == (1, 1, 1, 2)
    assert ledger.stats()["indexed"] == 1


def test_the_ledger_counts_deliveries_per_task_attempt(env: dict[str, str]) -> None:
    ledger = pipeline.current_context().ledger
    assert [ledger.count_delivery("task-a", 0) for _ in range(3)] == [1, 2, 3]
    assert ledger.count_delivery("task-a", 1) == 1
    assert ledger.count_delivery("task-b", 0) == 1


# ----------------------------------------------------------------------------------------------- batcher
def _submit_all(batcher: Batcher, items: list[int], gap: float = 0.0) -> list[BaseException | None]:
    """Each item from its own thread, ``gap`` seconds after the previous one (0: all at once; a gap: images
    coming back one by one)."""
    errors: list[BaseException | None] = [None] * len(items)

    def submit(index: int) -> None:
        try:
            batcher.submit(items[index])
        except BaseException as exc:
            errors[index] = exc

    threads = []
    for index in range(len(items)):
        threads.append(threading.Thread(target=submit, args=(index,)))
        threads[-1].start()
        if gap:
            time.sleep(gap)
    for thread in threads:
        thread.join(10)
    return errors


def test_the_batcher_sends_a_full_batch_at_once() -> None:
    sent: list[list[int]] = []
    batcher = Batcher(sent.append, size=4, linger=30.0)
    started = time.monotonic()
    assert _submit_all(batcher, [1, 2, 3, 4]) == [None] * 4
    assert time.monotonic() - started < 5, "a full batch does not wait for the linger"
    assert [sorted(batch) for batch in sent] == [[1, 2, 3, 4]]


def test_the_batcher_sends_a_partial_batch_after_its_linger() -> None:
    sent: list[list[int]] = []
    batcher = Batcher(sent.append, size=100, linger=0.2)
    started = time.monotonic()
    assert _submit_all(batcher, [1, 2, 3]) == [None] * 3
    assert 0.15 <= time.monotonic() - started < 5
    assert sorted(item for batch in sent for item in batch) == [1, 2, 3]
    assert len(sent) <= 3


def test_a_batch_that_keeps_receiving_images_keeps_filling_past_its_linger() -> None:
    # Items 0.05 s apart for ~0.5 s with a 0.2 s linger: a fixed linger would send three or more partial
    # batches; the batch waits for a 0.2 s quiet gap (or its 5 s ceiling), so it leaves once, whole.
    sent: list[list[int]] = []
    batcher = Batcher(sent.append, size=100, linger=0.2, max_linger=5.0)
    assert _submit_all(batcher, list(range(10)), gap=0.05) == [None] * 10
    assert [sorted(batch) for batch in sent] == [list(range(10))]


def test_a_steady_trickle_still_leaves_within_the_max_linger() -> None:
    sent: list[list[int]] = []
    stamps: list[float] = []

    def send(items: list[int]) -> None:
        stamps.append(time.monotonic())
        sent.append(items)

    batcher = Batcher(send, size=100, linger=0.2, max_linger=0.3)
    started = time.monotonic()
    assert _submit_all(batcher, list(range(24)), gap=0.05) == [None] * 24  # ~1.2 s of images
    assert sorted(item for batch in sent for item in batch) == list(range(24))
    assert len(sent) >= 2, "a batch waited past its max linger"
    assert stamps[0] - started < 1.0  # about max_linger after its first item (slack for a loaded machine)


def test_an_error_sending_a_batch_reaches_every_caller_waiting_on_it() -> None:
    def send(items: list[int]) -> None:
        raise ConnectionError(f"broker gone with {len(items)} items")

    errors = _submit_all(Batcher(send, size=3, linger=30.0), [1, 2, 3])
    assert all(isinstance(error, ConnectionError) for error in errors)


# ------------------------------------------------------------------------------------------ process cache
def test_the_process_cache_builds_once_and_forgets_on_pop() -> None:
    cache = ProcessCache()
    built: list[int] = []

    def factory() -> object:
        built.append(1)
        return object()

    first = cache.get("x", factory)
    assert cache.get("x", factory) is first and len(built) == 1
    assert cache.pop("x") is first
    assert cache.get("x", factory) is not first and len(built) == 2


# ---------------------------------------------------------------------------------------------- planning
def test_sync_planning_does_the_least_work_for_each_kind_of_change(env: dict[str, str]) -> None:
    registry = pipeline.current_context().registry
    plan = plan_upserts(registry, [(product("p1"), 1), (product("p2"), 1)], "run-1")
    assert plan.outcomes == {NEW: 2} and len(plan.jobs) == 2 and plan.reconcile == []
    registry.settle(plan.settle)

    again = plan_upserts(registry, [(product("p1"), 2)], "run-2")
    assert again.outcomes == {UNCHANGED: 1} and again.jobs == [] and again.reconcile == []
    registry.settle(again.settle)

    repriced = plan_upserts(registry, [(product("p1", price="$12.00"), 3)], "run-3")
    assert repriced.outcomes == {CHANGED: 1} and repriced.jobs == [] and repriced.reconcile == ["p1"]
    registry.settle(repriced.settle)

    added = plan_upserts(registry, [(product("p1", images=("http://img/a.jpg", "http://img/b.jpg")), 4)], "run-4")
    assert [job.image_url for job in added.jobs] == ["http://img/b.jpg"]
    registry.settle(added.settle)

    stale = plan_upserts(registry, [(product("p1"), 1)], "run-5")
    assert stale.outcomes == {STALE: 1} and stale.jobs == []

    deletes = plan_deletes(registry, [("p2", 9), ("never-seen", 9)])
    # A delete always reaches the store, even for a product the registry does not know (it may have been lost).
    assert deletes.outcomes == {DELETED: 1, MISSING: 1} and deletes.reconcile == ["p2", "never-seen"]


def test_retry_planning_drops_failures_whose_image_is_no_longer_wanted(env: dict[str, str]) -> None:
    registry = pipeline.current_context().registry
    registry.settle(plan_upserts(registry, [(product("p1"), 1)], "run-1").settle)

    def failure(pid: str, url: str) -> Failure:
        return Failure(product_id=pid, image_url=url, stage="fetch", reason="http_500", run_id="run-1")

    failures = [failure("p1", "http://img/a.jpg"), failure("p1", "http://img/a.jpg"), failure("p1", "http://gone")]
    plan, dropped = plan_retries(registry, [*failures, failure("unknown", "http://x")], "retry-1")
    assert [(job.product_id, job.image_url, job.run_id) for job in plan.jobs] == [("p1", "http://img/a.jpg", "retry-1")]
    assert dropped == 3


# ------------------------------------------------------------------------------------------------ messages
def test_messages_round_trip_through_their_json_form() -> None:
    job = Job(run_id="r", product_id="p", image_url="http://img/a.jpg", version=3)
    assert Job.from_message(job.to_message()) == job
    prepared = PreparedImage(job, "ab" * 32, image=b"\xff\xd8jpeg", timings={"download": 0.1})
    assert PreparedImage.from_message(prepared.to_message()) == prepared
    cached = PreparedImage(job, "cd" * 32, vector=encode_vector(np.ones(4)))
    assert PreparedImage.from_message(cached.to_message()).cached
    point = EmbeddedPoint(job, "ab" * 32, encode_vector(np.arange(4)), cached=True, sent_at=10.0)
    back = EmbeddedPoint.from_message(point.to_message())
    assert back == point and back.array().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert back.waited(12.5)["queue_wait"] == pytest.approx(2.5)


# ------------------------------------------------------------------------------------------- index stage
class CountingStore(EdgeStore):
    """The embedded engine on a test directory, counting its write requests (one upsert per batch is a rule)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "products")
        self.upserts = 0

    def _upsert(self, points: list[Any]) -> None:
        self.upserts += 1
        super()._upsert(points)


def test_the_index_stage_writes_wanted_points_drops_superseded_ones_and_fails_unknown_products(
    env: dict[str, str], tmp_path: Path
) -> None:
    ctx = pipeline.current_context()
    store = CountingStore(tmp_path)
    ctx._store = store
    registry = ctx.registry
    registry.settle(
        plan_upserts(registry, [(product("p1", images=("http://img/a.jpg", "http://img/b.jpg")), 1)], "r").settle
    )
    # Since the jobs were enqueued, image b was removed and the price changed.
    registry.settle(plan_upserts(registry, [(product("p1", price="$99.00"), 2)], "r").settle)
    run_id = ctx.ledger.start_run("test", "unit", status="enqueued")
    ctx.ledger.add(run_id, {"enqueued": 3})

    def point(pid: str, url: str) -> EmbeddedPoint:
        return EmbeddedPoint(Job(run_id, pid, url, 1), "00" * 32, encode_vector(np.ones(8, dtype=np.float32)))

    report = pipeline.index_stage(
        ctx, [point("p1", "http://img/a.jpg"), point("p1", "http://img/b.jpg"), point("ghost", "http://img/g.jpg")]
    )
    assert (report.indexed, report.superseded, report.failed) == (1, 1, 1)
    assert store.upserts == 1, "one upsert per batch"
    stored = {point_id: payload for point_id, payload, _vector in store.scroll()}
    assert set(stored) == {point_id_for("p1", "http://img/a.jpg")}
    assert stored[point_id_for("p1", "http://img/a.jpg")]["price"] == "$99.00", "the registry's payload"
    run = ctx.ledger.run(run_id)
    assert run is not None and (run[INDEXED], run[SUPERSEDED], run["failed:unknown_product"]) == (1, 1, 1)
    assert [f.reason for f in ctx.failures.entries()] == ["unknown_product"]


def test_a_registry_product_state_says_which_images_it_wants() -> None:
    state = ProductState(version=1, deleted=False, payload={}, images=("http://a",))
    assert state.wants("http://a") and not state.wants("http://b")
    assert not ProductState(version=2, deleted=True, payload={}, images=("http://a",)).wants("http://a")


def test_an_item_whose_transport_image_is_refused_fails_alone_in_its_batch(env: dict[str, str]) -> None:
    from lookalike.testing import images
    from lookalike.worker.decode import decode_image, encode_for_transport

    ctx = pipeline.current_context()
    run_id = ctx.ledger.start_run("test", "unit", status="enqueued")
    good = encode_for_transport(decode_image(images.product_bytes(5), max_pixels=10**7, formats=frozenset({"JPEG"})))
    items = [
        PreparedImage(Job(run_id, "p1", "http://img/good.jpg", 1), "aa" * 32, image=good),
        PreparedImage(Job(run_id, "p2", "http://img/tiff.jpg", 1), "bb" * 32, image=images.product_bytes(6, "TIFF")),
    ]
    points = pipeline.embed_stage(ctx, items)
    assert [point.job.product_id for point in points] == ["p1"]
    [failure] = ctx.failures.entries()
    assert (failure.product_id, failure.stage, failure.reason) == ("p2", "decode", "bad_transport")
