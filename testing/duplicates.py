"""A catalogue with planted duplicate listings and look-alike distinct products, with its ground truth.

Each *original* product photo (:func:`lookalike.testing.images.product_image`) is listed again under other
product ids, as marketplaces see it: the same file, re-encoded at a lower quality, resized, lightly cropped
(a few per cent off each edge), brightened. Each planted group (the original and its copies) is one true
duplicate group. Beside them sit *look-alikes*: distinct products photographed the same way (the same studio
background, the same kinds of shapes) whose shapes sit elsewhere or have another colour; they must not be
reported. Used by the precision and recall test, the README's measurement and the threshold's choice.
"""

from __future__ import annotations

import io
import itertools
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageEnhance

from lookalike.testing.images import product_image

COPY_KINDS = ("same_file", "reencoded", "resized", "cropped", "brightened")


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def planted_copy(original: Image.Image, kind: str) -> bytes:
    """The original photo as another seller would upload it."""
    if kind == "same_file":
        return _jpeg(original)
    if kind == "reencoded":
        return _jpeg(original, quality=55)
    if kind == "resized":
        return _jpeg(original.resize((original.width // 2, original.height // 2), Image.Resampling.BILINEAR), 85)
    if kind == "cropped":
        dx, dy = original.width * 4 // 100, original.height * 4 // 100
        return _jpeg(original.crop((dx, dy, original.width - dx, original.height - dy)), 85)
    if kind == "brightened":
        return _jpeg(ImageEnhance.Brightness(original).enhance(1.15), 85)
    raise ValueError(f"unknown copy kind {kind!r}")


LOOKALIKE_KINDS = ("rearranged", "recoloured", "shifted")


def lookalike_image(seed: int, kind: str, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A distinct product shot like ``product_image(seed)`` (the same studio background, the same kinds of
    shapes): ``rearranged`` draws them at other places and sizes, ``recoloured`` in the same places in other
    colours (another colour of the same article), ``shifted`` moves every shape by a tenth of the frame."""
    rng = random.Random(seed)
    width, height = size
    background = tuple(rng.randint(170, 255) for _ in range(3))
    other = random.Random(seed * 1000 + LOOKALIKE_KINDS.index(kind) + 1)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    shift_x, shift_y = (width // 10, height // 10) if kind == "shifted" else (0, 0)
    for _ in range(rng.randint(3, 6)):
        colour = tuple(rng.randint(0, 200) for _ in range(3))
        x0, y0 = rng.randint(0, width * 3 // 4), rng.randint(0, height * 3 // 4)
        x1, y1 = x0 + rng.randint(width // 8, width // 2), y0 + rng.randint(height // 8, height // 2)
        shape = rng.choice(("rectangle", "ellipse", "polygon"))
        points = [(rng.randint(x0, x1), rng.randint(y0, y1)) for _ in range(5)] if shape == "polygon" else []
        if kind == "rearranged":
            x0, y0 = other.randint(0, width * 3 // 4), other.randint(0, height * 3 // 4)
            x1, y1 = x0 + other.randint(width // 8, width // 2), y0 + other.randint(height // 8, height // 2)
            points = [(other.randint(x0, x1), other.randint(y0, y1)) for _ in range(5)]
        elif kind == "recoloured":
            colour = tuple(min(255, max(0, c + other.choice((-1, 1)) * other.randint(50, 90))) for c in colour)
        x0, x1, y0, y1 = x0 + shift_x, x1 + shift_x, y0 + shift_y, y1 + shift_y
        points = [(x + shift_x, y + shift_y) for x, y in points]
        if shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon(points, fill=colour)
    return image


@dataclass(frozen=True)
class Listing:
    product_id: str
    name: str
    category: str
    price: str
    image: bytes
    role: str  # original, a copy kind, a look-alike kind, unique


@dataclass
class PlantedCatalogue:
    listings: list[Listing] = field(default_factory=list)
    groups: list[set[str]] = field(default_factory=list)  # the planted duplicate groups (original + copies)

    def true_pairs(self) -> set[frozenset[str]]:
        return {frozenset(pair) for group in self.groups for pair in itertools.combinations(sorted(group), 2)}

    def by_id(self) -> dict[str, Listing]:
        return {listing.product_id: listing for listing in self.listings}


def planted_catalogue(originals: int = 12, uniques: int = 12, seed: int = 500) -> PlantedCatalogue:
    """``originals`` photos each listed under 1 + len(COPY_KINDS) ids, one distinct look-alike product of each
    of LOOKALIKE_KINDS per original, and ``uniques`` unrelated products."""
    catalogue = PlantedCatalogue()
    add = catalogue.listings.append
    category = "Clothing | Shirts"
    for index in range(originals):
        photo_seed = seed + index
        original = product_image(photo_seed)
        group = {f"orig-{index}"}
        add(Listing(f"orig-{index}", f"Shirt {index}", category, f"${10 + index}.99", _jpeg(original), "original"))
        for kind in COPY_KINDS:
            product_id = f"copy-{index}-{kind}"
            group.add(product_id)
            add(Listing(product_id, f"Shirt {index} ({kind})", category, f"${11 + index}.49",
                        planted_copy(original, kind), kind))  # fmt: skip
        catalogue.groups.append(group)
        for kind in LOOKALIKE_KINDS:
            add(Listing(f"alike-{index}-{kind}", f"Other shirt {index} ({kind})", category, "$9.99",
                        _jpeg(lookalike_image(photo_seed, kind)), kind))  # fmt: skip
    for index in range(uniques):
        add(Listing(f"unique-{index}", f"Thing {index}", "Home | Misc", "$5.00",
                    _jpeg(product_image(seed + 10_000 + index)), "unique"))  # fmt: skip
    return catalogue


def precision_recall(found: set[frozenset[str]], truth: set[frozenset[str]]) -> tuple[float, float]:
    """Of the product pairs reported, the share that are planted (precision); of the planted, the share
    reported (recall). Nothing reported is a precision of 1.0 (nothing wrong was said)."""
    hits = len(found & truth)
    precision = hits / len(found) if found else 1.0
    recall = hits / len(truth) if truth else 1.0
    return precision, recall


def pairs_in_groups(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(pair) for group in groups for pair in itertools.combinations(sorted(group), 2)}


# ------------------------------------------------------------------------------------------- measurement
THRESHOLDS = (0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


def measure(model_dir: str, originals: int = 40, seed: int = 500) -> dict[str, object]:
    """Embed the planted catalogue with the model in ``model_dir`` through the workers' own decode, and report
    the score of each kind of copy and of look-alike against its original, and the precision and recall of the
    groups (connected pairs, as the report builds them) at each threshold of THRESHOLDS."""
    import numpy as np

    from lookalike.config.settings import Settings
    from lookalike.state.duplicate_groups import connected
    from lookalike.worker.decode import decode_image, decode_transport, encode_for_transport
    from lookalike.worker.embed import Embedder

    catalogue = planted_catalogue(originals=originals, uniques=originals, seed=seed)
    embedder = Embedder(Embedder.spec_from(Settings(model_dir=model_dir)))
    formats = ("JPEG",)
    images = [
        decode_transport(encode_for_transport(decode_image(item.image, max_pixels=16_000_000, formats=formats)))
        for item in catalogue.listings
    ]
    vectors = np.asarray(embedder.embed(images), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [item.product_id for item in catalogue.listings]
    index = {product: row for row, product in enumerate(ids)}
    scores = vectors @ vectors.T
    kinds: dict[str, list[float]] = {}
    for item in catalogue.listings:
        if item.role in (*COPY_KINDS, *LOOKALIKE_KINDS):
            original = f"orig-{item.product_id.split('-')[1]}"
            kinds.setdefault(item.role, []).append(float(scores[index[item.product_id], index[original]]))
    truth = catalogue.true_pairs()
    table = []
    for threshold in THRESHOLDS:
        rows, cols = np.where(np.triu(scores, 1) >= threshold)
        edges = [(ids[int(row)], ids[int(col)]) for row, col in zip(rows, cols, strict=True)]
        precision, recall = precision_recall(pairs_in_groups(connected(edges)), truth)
        table.append({"threshold": threshold, "precision": round(precision, 3), "recall": round(recall, 3)})
    return {
        "listings": len(ids),
        "planted_pairs": len(truth),
        "against_original": {
            kind: {"min": round(min(values), 4), "max": round(max(values), 4)} for kind, values in kinds.items()
        },
        "groups": table,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m lookalike.testing.duplicates [MODEL_DIR] [--originals N]``: the measurement the default
    threshold comes from (the tiny test model when no directory is given), as two Markdown tables."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model_dir", nargs="?", help="a model directory (default: the tiny test model)")
    parser.add_argument("--originals", type=int, default=40)
    parser.add_argument("--seed", type=int, default=500)
    args = parser.parse_args(argv)
    model_dir = args.model_dir
    if model_dir is None:
        from lookalike.testing.tiny_model import build_tiny_model

        model_dir = str(build_tiny_model(tempfile.mkdtemp(prefix="lookalike-tiny-")))
    result = measure(model_dir, args.originals, args.seed)
    print(f"{result['listings']} listings, {result['planted_pairs']} planted pairs\n")
    print("| listing | score against its original, min | max |\n|---|---:|---:|")
    for kind, span in result["against_original"].items():  # type: ignore[attr-defined]
        print(f"| {kind} | {span['min']:.4f} | {span['max']:.4f} |")
    print("\n| threshold | precision | recall |\n|---:|---:|---:|")
    for row in result["groups"]:  # type: ignore[attr-defined]
        print(f"| {row['threshold']:.2f} | {row['precision']:.3f} | {row['recall']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
