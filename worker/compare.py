"""Two models on the same images: how close their vectors are, and whether search would answer the same.

Cosine between A's and B's vector of one image says how far a model moved each vector (a quantized copy
should barely move them). It does not say whether *search* changes: that depends on how the vectors move
relative to each other. So the neighbour overlap answers it directly: for each image, its k nearest
neighbours among the sample under A and under B, and how many of A's k B also returns. The CLI fetches a
sample of the indexed catalogue's images and calls :func:`compare_models`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.config.settings import DEFAULT_MODEL, Settings
from lookalike.worker.decode import decode_image
from lookalike.worker.embed import Embedder
from lookalike.worker.model import ModelSpec, resolve_providers

BATCH = 32


@dataclass(frozen=True)
class CompareReport:
    images: int
    k: int  # neighbours compared per image (the asked k, at most images - 1)
    cosine_mean: float  # between A's and B's vector of the same image
    cosine_p5: float  # 5th percentile: the worst-moved images
    cosine_min: float
    overlap_mean: float  # of A's k nearest neighbours, how many B also returns (out of k)
    overlap_min: int
    overlaps: tuple[int, ...]  # per image, in the order given

    @property
    def overlap_fraction(self) -> float:
        return self.overlap_mean / self.k if self.k else 1.0


def compare_models(
    dir_a: Path,
    dir_b: Path,
    images: Sequence[Image.Image],
    *,
    k: int = 10,
    model_name: str = DEFAULT_MODEL,
    threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> CompareReport:
    """Embed ``images`` with the model in ``dir_a`` and the one in ``dir_b`` (through the workers' own
    :class:`Embedder`) and compare them. ``images`` are RGB images, e.g. from :func:`decode_sample`;
    at least two are needed for neighbours."""
    if len(images) < 2:
        raise ValueError("compare_models needs at least 2 images")
    vectors_a = embed_all(_spec(dir_a, model_name, threads, providers), images)
    vectors_b = embed_all(_spec(dir_b, model_name, threads, providers), images)
    return compare_vectors(vectors_a, vectors_b, k=k)


def compare_vectors(vectors_a: np.ndarray, vectors_b: np.ndarray, *, k: int = 10) -> CompareReport:
    """The comparison itself, on two (N, dim) arrays whose rows are the same N images."""
    a, b = _unit(vectors_a), _unit(vectors_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a.shape[0]} vectors from A but {b.shape[0]} from B")
    count = a.shape[0]
    cosines = np.sum(a * b, axis=1)
    k = max(0, min(k, count - 1))
    overlaps = [len(set(x) & set(y)) for x, y in zip(_neighbours(a, k), _neighbours(b, k), strict=True)]
    return CompareReport(
        images=count,
        k=k,
        cosine_mean=float(np.mean(cosines)),
        cosine_p5=float(np.percentile(cosines, 5)),
        cosine_min=float(np.min(cosines)),
        overlap_mean=float(np.mean(overlaps)) if overlaps else float(k),
        overlap_min=int(min(overlaps)) if overlaps else k,
        overlaps=tuple(int(o) for o in overlaps),
    )


def decode_sample(data: bytes, settings: Settings) -> Image.Image:
    """Image bytes -> the RGB 224 x 224 image the pipeline would embed (same checks, same reduced-scale
    decode, same crop). Raises ``ImageRejected`` (with a ``reason``) for bytes the pipeline would refuse:
    the caller skips those."""
    return decode_image(data, max_pixels=settings.max_image_pixels, formats=settings.allowed_image_formats)


def embed_all(spec: ModelSpec, images: Sequence[Image.Image]) -> np.ndarray:
    """All ``images`` through one freshly loaded model, in the workers' batch size."""
    embedder = Embedder(spec)
    parts = [embedder.embed(list(images[start : start + BATCH])) for start in range(0, len(images), BATCH)]
    return np.concatenate(parts)


def _spec(directory: Path, model_name: str, threads: int, providers: Sequence[str]) -> ModelSpec:
    return ModelSpec(model_name, Path(directory), None, threads, resolve_providers(",".join(providers)))


def _unit(vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms == 0, 1.0, norms)


def _neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each row's k most similar other rows, best first (ties broken by index)."""
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]
