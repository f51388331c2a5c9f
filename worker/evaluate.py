"""Retrieval quality on the user's own catalogue, with no labels: every indexed image is its own ground truth.

A sample of the catalogue's images is downloaded and changed the way a shopper's photo of the same product
differs from the catalogue's (cropped, smaller, JPEG-compressed, lit differently, tilted, letterboxed); each
copy is searched for, and the product it came from should come back first. For words, each sampled product's
name, and a shortened name (its first words, as a shopper types), should find that product in the top 5, in
each mode (keyword, semantic, hybrid).

Reported per transform and overall (the mean over the six transforms; the unchanged image is a baseline shown
beside them, not part of the mean): recall@1 (the product comes first), recall@5 (it is in the top 5) and MRR
(the mean of 1/rank, 0 when it is not in the top 5). Everything random (the sample, each transform's strength)
comes from one seed: the same seed on the same index gives the same numbers.

What it cannot say: how the model does on real shoppers' photos (other backgrounds, other objects, other
products that look alike), or on words shoppers use that the catalogue does not; a tiny test model's numbers
test the tool, not the model.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageEnhance, ImageOps

from lookalike.state.search import SearchRequest, SearchResponse

K = 5
BASELINE = "original"
MODES = ("keyword", "semantic", "hybrid")
SHORT_WORDS = 3  # a shortened name: its first three words, as a shopper types it


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _crop(image: Image.Image, rng: random.Random) -> bytes:
    width, height = image.size
    keep_w, keep_h = rng.uniform(0.6, 0.8), rng.uniform(0.6, 0.8)
    w, h = max(1, int(width * keep_w)), max(1, int(height * keep_h))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return _jpeg(image.crop((left, top, left + w, top + h)))


def _scale_down(image: Image.Image, rng: random.Random) -> bytes:
    factor = rng.uniform(0.25, 0.4)
    size = (max(16, int(image.width * factor)), max(16, int(image.height * factor)))
    return _jpeg(image.resize(size, Image.Resampling.BILINEAR))


def _jpeg_reencode(image: Image.Image, rng: random.Random) -> bytes:
    return _jpeg(image, quality=rng.randint(10, 25))


def _brightness_contrast(image: Image.Image, rng: random.Random) -> bytes:
    brighter = ImageEnhance.Brightness(image).enhance(rng.choice((rng.uniform(0.6, 0.8), rng.uniform(1.2, 1.4))))
    return _jpeg(ImageEnhance.Contrast(brighter).enhance(rng.choice((rng.uniform(0.6, 0.8), rng.uniform(1.2, 1.4)))))


def _rotation(image: Image.Image, rng: random.Random) -> bytes:
    angle = rng.choice((-1, 1)) * rng.uniform(5, 15)
    return _jpeg(image.convert("RGB").rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor="white"))


def _letterbox(image: Image.Image, rng: random.Random) -> bytes:
    """The image centred on a canvas of the other orientation (bars above and below, or left and right)."""
    width, height = image.size
    ratio = rng.uniform(1.5, 1.8)
    wide = width >= height
    canvas = (width, max(height, int(width * ratio))) if wide else (max(width, int(height * ratio)), height)
    colour = rng.choice(("white", "black"))
    return _jpeg(ImageOps.pad(image.convert("RGB"), canvas, color=colour, centering=(0.5, 0.5)))


TRANSFORMS: dict[str, Callable[[Image.Image, random.Random], bytes]] = {
    "crop": _crop,
    "scale_down": _scale_down,
    "jpeg": _jpeg_reencode,
    "brightness_contrast": _brightness_contrast,
    "rotation": _rotation,
    "letterbox": _letterbox,
}


def transformed_copies(image: Image.Image, rng: random.Random) -> dict[str, bytes]:
    """The baseline and one copy per transform, each transform's strength drawn from ``rng``."""
    copies = {BASELINE: _jpeg(image)}
    for name, transform in TRANSFORMS.items():
        copies[name] = transform(image, rng)
    return copies


def short_name(name: str) -> str | None:
    """The first words of a product name, or None when the name has no more words than that."""
    words = name.split()
    return " ".join(words[:SHORT_WORDS]) if len(words) > SHORT_WORDS else None


@dataclass(frozen=True)
class Sampled:
    """One sampled catalogue image: the product it belongs to, its name, its bytes."""

    product_id: str
    name: str
    image_url: str
    data: bytes


@dataclass
class Tally:
    """Ranks of the right product over a set of queries (0: not in the top K)."""

    ranks: list[int] = field(default_factory=list)
    errors: int = 0

    def add(self, rank: int) -> None:
        self.ranks.append(rank)

    def to_data(self) -> dict[str, Any]:
        count = len(self.ranks)
        if not count:
            return {"queries": 0, "errors": self.errors, "recall@1": None, "recall@5": None, "mrr": None}
        return {
            "queries": count,
            "errors": self.errors,
            "recall@1": round(sum(1 for r in self.ranks if r == 1) / count, 4),
            "recall@5": round(sum(1 for r in self.ranks if 1 <= r <= K) / count, 4),
            "mrr": round(sum(1 / r for r in self.ranks if r) / count, 4),
        }


def rank_of(product_id: str, response: SearchResponse) -> int:
    for position, hit in enumerate(response.results, 1):
        if hit.product_id == product_id:
            return position
    return 0


Search = Callable[[SearchRequest], SearchResponse]


def evaluate(
    samples: Sequence[Sampled], search: Search, *, seed: int, max_pixels: int, collection: str | None = None
) -> dict[str, Any]:
    """Run every query of the evaluation through ``search`` (the same route `lookalike search` takes), against
    the live collection or the named one, and return the report as data. A query the search refuses counts as
    a miss and as an error."""
    from lookalike.state.search import QueryRejected

    images = {name: Tally() for name in (BASELINE, *TRANSFORMS)}
    words = {kind: {mode: Tally() for mode in MODES} for kind in ("name", "short_name")}
    decoded = 0

    def ask(request: SearchRequest, product_id: str, tally: Tally) -> None:
        try:
            tally.add(rank_of(product_id, search(request)))
        except QueryRejected:
            tally.errors += 1
            tally.add(0)

    for sample in samples:
        # One generator per image, seeded by the run's seed and the image: the same copies whatever the order.
        rng = random.Random(f"{seed}\0{sample.image_url}")
        try:
            with Image.open(io.BytesIO(sample.data)) as opened:
                if opened.width * opened.height > max_pixels:
                    continue
                image = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        decoded += 1
        for name, data in transformed_copies(image, rng).items():
            ask(SearchRequest(image=data, k=K, collection=collection), sample.product_id, images[name])
    named = {s.product_id: s.name for s in samples if s.name.strip()}
    for product_id, name in sorted(named.items()):
        queries = {"name": name[:1000], "short_name": short_name(name)}
        for kind, text in queries.items():
            if text is None:
                continue
            for mode in MODES:
                request = SearchRequest(text=text, mode=mode, k=K, collection=collection)
                ask(request, product_id, words[kind][mode])
    per_transform = {name: tally.to_data() for name, tally in images.items()}
    overall = Tally(ranks=[r for name in TRANSFORMS for r in images[name].ranks])
    overall.errors = sum(images[name].errors for name in TRANSFORMS)
    return {
        "seed": seed,
        "k": K,
        "images": {"sampled": len(samples), "queried": decoded, "per_transform": per_transform},
        "overall": overall.to_data(),
        "words": {
            "products": len(named),
            "recall@5": {
                kind: {mode: tally.to_data()["recall@5"] for mode, tally in modes.items()}
                for kind, modes in words.items()
            },
            "queries": {kind: modes["keyword"].to_data()["queries"] for kind, modes in words.items()},
            "errors": sum(t.errors for modes in words.values() for t in modes.values()),
        },
    }


def choose(urls: Sequence[tuple[str, str, str]], sample: int, seed: int) -> list[tuple[str, str, str]]:
    """``sample`` of the (product id, name, image URL) triples, the same ones for the same seed and catalogue."""
    ordered = sorted(urls)
    return random.Random(seed).sample(ordered, min(sample, len(ordered)))


__all__ = ["TRANSFORMS", "Sampled", "choose", "evaluate", "short_name", "transformed_copies"]
