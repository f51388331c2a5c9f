"""`lookalike model`: quantize the configured models, and compare two models on the user's own catalogue."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from lookalike.app.broker import Note
from lookalike.app.services import Services
from lookalike.config.settings import Settings
from lookalike.state.errors import BackendUnavailable, Misconfigured


def quantize_models(settings: Settings, out: Path, note: Note) -> dict[str, Any]:
    """int8 copies of the configured vision and text model directories under ``out``: kind -> report."""
    sources = {"vision": settings.model_dir, "text": settings.text_model_dir}
    if not any(sources.values()):
        raise Misconfigured(
            "set LOOKALIKE_MODEL_DIR (and LOOKALIKE_TEXT_MODEL_DIR) to the model directories to quantize"
        )
    try:
        from lookalike.worker.quantize import QuantizeError, quantize_model_dir
    except ImportError as exc:
        raise Misconfigured(f"quantizing needs the quantize extra: pip install 'lookalike[quantize]' ({exc})") from None
    reports: dict[str, Any] = {}
    for kind, source in sources.items():
        if source is None:
            note(f"no {kind} model directory configured: skipped")
            continue
        try:
            reports[kind] = quantize_model_dir(Path(source), out / kind)
        except QuantizeError as exc:
            raise Misconfigured(str(exc)) from None
    return reports


def compare_on_catalogue(services: Services, dir_a: Path, dir_b: Path, *, sample: int, seed: int) -> tuple[Any, int]:
    """Both models over a sample of the indexed catalogue's images: (the comparison, images not fetched)."""
    from lookalike.worker.compare import compare_models, decode_sample
    from lookalike.worker.decode import ImageRejected
    from lookalike.worker.fetch import FetchError, fetch_image
    from lookalike.worker.pipeline import WorkerContext

    registry = services.state.registry
    urls = sorted({url for _pid, state in registry.items() if not state.deleted for url in state.images})
    if len(urls) < 2:
        raise Misconfigured("the catalogue has fewer than 2 images: ingest it first")
    chosen = random.Random(seed).sample(urls, min(sample, len(urls)))
    ctx = WorkerContext(services.settings)
    images = []
    skipped = 0
    for url in chosen:
        try:
            images.append(decode_sample(fetch_image(url, ctx.session, ctx.limits).data, ctx.settings))
        except (FetchError, ImageRejected):
            skipped += 1
    if len(images) < 2:
        raise BackendUnavailable(f"fewer than 2 of the {len(chosen)} sampled images could be downloaded and decoded")
    return compare_models(dir_a, dir_b, images, k=10, model_name=ctx.settings.model), skipped
