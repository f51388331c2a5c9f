"""The store owner's half of duplicate detection: look up the near-identical images of other products.

The index stage calls :func:`check_records` with the points it has just written: one batched nearest-points
query for the whole batch (``query_dense_batch``), whose hits of the point's own product are dropped (a
product's own images never count; see OWN_SLACK), from the detection floor (the lowest threshold any category
may apply, see :mod:`lookalike.state.duplicate_groups`). The pairs found replace what those points had on
record, so a re-written point (a changed image at the same URL, a re-ingest) is judged afresh.

:func:`scan_page` does the same for one page of the stored points: `lookalike duplicates scan` calls it page
after page (each page a short task on the store owner, so ingestion interleaves), and the cursor lives in Redis
so a scan that was interrupted resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lookalike.state.duplicate_groups import Thresholds
from lookalike.state.duplicates import DuplicateBook, ImagePair
from lookalike.worker.store import Hit, Narrowing, PointRecord, VectorStore

if TYPE_CHECKING:
    from lookalike.worker.pipeline import WorkerContext

# Neighbours asked per point: a photo listed more often than this still ends in one group, because groups are
# the connected pairs and every copy finds some of the others.
NEIGHBOURS = 10
# The lookup is unfiltered, asking this many more, and the point's own product is dropped afterwards: a filter
# excluding one product per query doubles qdrant-edge's search time (measured: 0.85 against 0.39 ms a query at
# 5,000 points). A point whose answer was full of its own product's images is asked again with the filter, so
# the result is the same as a filtered query's.
OWN_SLACK = 8
SCAN_PAGE = 1000


@dataclass(frozen=True)
class Written:
    point_id: str
    product_id: str
    image_url: str
    vector: Any


def find_pairs(store: VectorStore, points: Sequence[Written], floor: float) -> list[ImagePair]:
    """The image pairs scoring at least ``floor`` between these points and other products' points."""
    if not points:
        return []
    limit = NEIGHBOURS + OWN_SLACK
    answers = store.query_dense_batch(
        [point.vector for point in points], limit, [Narrowing()] * len(points), score_threshold=floor
    )
    crowded = [
        index
        for index, (point, hits) in enumerate(zip(points, answers, strict=True))
        if len(hits) == limit and len(_others(point, hits)) < NEIGHBOURS
    ]
    if crowded:
        again = store.query_dense_batch(
            [points[index].vector for index in crowded],
            NEIGHBOURS,
            [Narrowing(exclude_product=points[index].product_id) for index in crowded],
            score_threshold=floor,
        )
        for index, hits in zip(crowded, again, strict=True):
            answers[index] = hits
    found = []
    for point, hits in zip(points, answers, strict=True):
        mine = (point.point_id, point.product_id, point.image_url)
        for hit in _others(point, hits)[:NEIGHBOURS]:
            image = str(hit.payload.get("image_url", ""))
            found.append(ImagePair.of(*mine, hit.id, str(hit.payload["product_id"]), image, hit.score))
    return found


def _others(point: Written, hits: list[Hit]) -> list[Hit]:
    """The hits of other products (a product's own images never count)."""
    return [hit for hit in hits if hit.payload.get("product_id") not in (None, "", point.product_id)]


def check_points(book: DuplicateBook, store: VectorStore, points: Sequence[Written], floor: float) -> int:
    """Replace these points' pairs with what they match now; returns the pairs recorded."""
    if not points:
        return 0
    return book.replace({point.point_id: point.product_id for point in points}, find_pairs(store, points, floor))


def check_records(book: DuplicateBook, store: VectorStore, records: Sequence[PointRecord], floor: float) -> int:
    """The index stage's check, over the records it has just upserted."""
    points = [
        Written(record.id, str(record.payload["product_id"]), str(record.payload.get("image_url", "")), record.vector)
        for record in records
    ]
    return check_points(book, store, points, floor)


def scan_page(
    book: DuplicateBook, store: VectorStore, thresholds: Thresholds, *, restart: bool = False, page: int = SCAN_PAGE
) -> dict[str, Any]:
    """Check one page of stored points, from the saved cursor; returns the scan's state after it.

    A new scan starts when asked (``restart``), when none was ever run, or when the last one finished; an
    unfinished one continues. The floor is fixed when a scan starts, so one scan applies one threshold.
    """
    state = book.scan_state()
    if restart or not state or state.get("done"):
        book.reset_scan()
        state = {
            "cursor": None,
            "scanned": 0,
            "pairs_recorded": 0,
            "total": store.count(),
            "floor": thresholds.floor,
            "started_at": round(time.time(), 3),
            "done": False,
        }
        book.save_scan(**state)
    started = time.perf_counter()
    points, following = store.scroll_page(state.get("cursor"), page)
    written = [
        Written(point_id, str(payload.get("product_id", "")), str(payload.get("image_url", "")), vector)
        for point_id, payload, vector in points
        if payload.get("product_id") and vector is not None
    ]
    recorded = check_points(book, store, written, float(state["floor"]))
    state.update(
        {
            "cursor": following,
            "scanned": int(state["scanned"]) + len(points),
            "pairs_recorded": int(state["pairs_recorded"]) + recorded,
            "done": following is None,
            "seconds": round(float(state.get("seconds", 0.0)) + time.perf_counter() - started, 3),
        }
    )
    if following is None:
        state["finished_at"] = round(time.time(), 3)
    book.save_scan(**state)
    return state


def scan_stage(ctx: WorkerContext, *, restart: bool = False, page: int = SCAN_PAGE) -> dict[str, Any]:
    """One page of the scan with the worker's store and the current settings (the task's body, and the CLI's
    when no store worker runs)."""
    return scan_page(ctx.duplicates, ctx.store, Thresholds.from_settings(ctx.settings), restart=restart, page=page)
