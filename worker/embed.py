"""Embed stage: RGB images -> L2-normalised vectors, through fastembed's ONNX image model.

The model is loaded lazily, once per process, and re-loaded if the process turns out to be a fork of the one
that loaded it: an ONNX Runtime session carried across ``fork()`` shares thread pools and locks with its
parent and is not safe to use (:mod:`lookalike.state.process`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.config.settings import Settings
from lookalike.state.process import process_cache


class ModelUnavailable(RuntimeError):
    """The model could not be loaded (not downloaded and no local directory, or a broken directory)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    local_dir: Path | None
    cache_dir: Path | None
    threads: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelSpec:
        return cls(settings.model, settings.model_dir, settings.model_cache_dir, settings.onnx_threads)


class Embedder:
    """One fastembed ``ImageEmbedding`` with call accounting (calls and images) for batching checks."""

    def __init__(self, spec: ModelSpec) -> None:
        from fastembed import ImageEmbedding

        if spec.local_dir is not None:
            for required in ("model.onnx", "preprocessor_config.json"):
                if not (spec.local_dir / required).is_file():
                    raise ModelUnavailable(f"LOOKALIKE_MODEL_DIR={spec.local_dir} has no {required}")
        try:
            self._model = ImageEmbedding(
                model_name=spec.name,
                cache_dir=str(spec.cache_dir) if spec.cache_dir else None,
                threads=spec.threads,
                specific_model_path=str(spec.local_dir) if spec.local_dir else None,
            )
        except Exception as exc:
            hint = "" if spec.local_dir else " (offline? download it once, or set LOOKALIKE_MODEL_DIR to a local copy)"
            raise ModelUnavailable(f"cannot load model {spec.name}: {exc}{hint}") from exc
        self.spec = spec
        self.dim = ImageEmbedding.get_embedding_size(spec.name)
        self.calls = 0
        self.images = 0
        self.seconds = 0.0

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """One model call for the whole list: an (N, dim) float32 array of unit vectors."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        started = time.perf_counter()
        vectors = np.asarray(list(self._model.embed(images, batch_size=len(images))), dtype=np.float32)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self.images += len(images)
        if vectors.shape != (len(images), self.dim):
            raise ModelUnavailable(f"model returned shape {vectors.shape}, expected ({len(images)}, {self.dim})")
        return vectors


def get_embedder(spec: ModelSpec) -> Embedder:
    """The process's embedder for ``spec``, loaded on first use (and again after a fork)."""
    return process_cache.get(("embedder", spec), lambda: Embedder(spec))


def model_dimension(name: str) -> int:
    """The vector size of a fastembed image model, without loading it."""
    from fastembed import ImageEmbedding

    return ImageEmbedding.get_embedding_size(name)
