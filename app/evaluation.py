"""`lookalike eval`: pick the sample, download it, and send every query the way `lookalike search` sends it.

The measuring itself is :mod:`lookalike.worker.evaluate`; this module only gathers its inputs: the sampled images
(from the product registry, leaving out the images recorded as failed: they were never indexed), their bytes
(downloaded through the same address guard as catalogue images), and a search function (the running workers, or
this process when none runs, as `lookalike search` does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lookalike.app.services import Services
from lookalike.state.search import SearchRequest, SearchResponse

Note = Callable[[str], None]


class EvalFailed(Exception):
    """The evaluation cannot run: ``code`` 2 (nothing to sample) or 3 (nothing could be downloaded, an outage)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _searcher(settings: Any, note: Note) -> Callable[[SearchRequest], SearchResponse]:
    """Every query through the gateway, as `lookalike search` sends it (the workers, or this process when none
    runs): an outage ends the evaluation, a refused query is a miss."""
    from lookalike.app.gateway import Gateway
    from lookalike.state.errors import Unavailable

    # One reading of the live workers serves a few seconds of queries (an evaluation sends hundreds).
    gateway = Gateway(settings, note=note, workers_max_age=5.0)

    def search(request: SearchRequest) -> SearchResponse:
        try:
            return SearchResponse.from_data(gateway.search(request))
        except Unavailable as exc:
            raise EvalFailed(str(exc), 3) from None

    return search


def run_eval(services: Services, *, sample: int, seed: int, collection: str | None = None) -> dict[str, Any]:
    """The report of `lookalike eval` on the live collection, or on the named one (a reindex's shadow)."""
    from lookalike.worker import pipeline
    from lookalike.worker.decode import ImageRejected
    from lookalike.worker.evaluate import Sampled, choose, evaluate
    from lookalike.worker.fetch import FetchError, fetch_image
    from lookalike.worker.ownership import read_record
    from lookalike.worker.store import StoreError, live_collection

    state = services.state
    note = services.note
    failed = {failure.image_url for failure in state.failures.entries()}
    triples = [
        (product_id, str(product.payload.get("name") or ""), url)
        for product_id, product in state.registry.items()
        if not product.deleted
        for url in product.images
        if url not in failed
    ]
    if not triples:
        raise EvalFailed("no indexed image to sample: ingest a catalogue first")
    chosen = choose(triples, sample, seed)
    ctx = pipeline.current_context()
    samples: list[Sampled] = []
    skipped = 0
    for product_id, name, url in chosen:
        try:
            samples.append(Sampled(product_id, name, url, fetch_image(url, ctx.session, ctx.limits).data))
        except (FetchError, ImageRejected):
            skipped += 1
    if not samples:
        raise EvalFailed(f"none of the {len(chosen)} sampled images could be downloaded", 3)
    report = evaluate(
        samples,
        _searcher(ctx.settings, note),
        seed=seed,
        max_pixels=ctx.settings.max_image_pixels,
        collection=collection,
    )
    collection = collection or live_collection(ctx.settings)
    try:
        record = read_record(ctx.settings, collection)
    except StoreError:
        record = None
    report["images"]["not_downloaded"] = skipped
    report["collection"] = collection
    report["models"] = (
        None if record is None else {"vision": record.vision.fingerprint, "text": record.text.fingerprint}
    )
    return report
