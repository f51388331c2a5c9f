"""Embed stage: RGB images -> L2-normalised vectors, through fastembed's ONNX image model.

The model is loaded lazily, once per process, and re-loaded if the process turns out to be a fork of the one
that loaded it: an ONNX Runtime session carried across ``fork()`` shares thread pools and locks with its
parent and is not safe to use (:mod:`lookalike.state.process`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.config.settings import Settings
from lookalike.state.process import process_cache


class ModelUnavailable(RuntimeError):
    """The model could not be loaded (not downloaded and no local directory, or a broken directory)."""


CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    local_dir: Path | None
    cache_dir: Path | None
    threads: int
    providers: tuple[str, ...] = (CPU,)

    @classmethod
    def from_settings(cls, settings: Settings, *, threads: int | None = None) -> ModelSpec:
        """The model as the settings describe it; ``threads`` for the query processes' own count."""
        return cls(
            settings.model,
            settings.model_dir,
            settings.model_cache_dir,
            threads or settings.effective_onnx_threads,
            settings.onnx_provider_names,
        )


@dataclass(frozen=True)
class OnnxRuntimeInEffect:
    """What the embedding processes run the model with (for ``lookalike status``)."""

    providers: tuple[str, ...]  # as configured, in order of preference
    available: tuple[str, ...]  # what this onnxruntime build offers
    threads: int  # ONNX threads per embedding process
    threads_chosen: bool  # True when LOOKALIKE_ONNX_THREADS is 0 and lookalike chose the count
    processes: int  # embedding processes per worker
    usable_cpus: int


def resolve_providers(names: str | Sequence[str]) -> tuple[str, ...]:
    """Provider names (comma-separated or a sequence) checked against this onnxruntime build: a name it does
    not offer is a one-line :class:`ModelUnavailable`, not a stack trace from deep inside fastembed."""
    import onnxruntime

    wanted = tuple(part.strip() for part in (names.split(",") if isinstance(names, str) else names) if part.strip())
    available = onnxruntime.get_available_providers()
    missing = [name for name in wanted if name not in available]
    if missing or not wanted:
        raise ModelUnavailable(
            f"LOOKALIKE_ONNX_PROVIDERS: {', '.join(missing) or 'none named'} not available in this onnxruntime "
            f"(available: {', '.join(available)})"
        )
    return wanted


def onnx_runtime_in_effect(settings: Settings) -> OnnxRuntimeInEffect:
    """The providers and threads an embedding process started with ``settings`` uses, without loading a model.
    Raises :class:`ModelUnavailable` when a configured provider is not available."""
    import onnxruntime

    from lookalike.config.cpus import usable_cpus

    return OnnxRuntimeInEffect(
        providers=resolve_providers(settings.onnx_provider_names),
        available=tuple(onnxruntime.get_available_providers()),
        threads=settings.effective_onnx_threads,
        threads_chosen=settings.onnx_threads == 0,
        processes=settings.effective_embed_concurrency,
        usable_cpus=usable_cpus(),
    )


class Embedder:
    """One fastembed ``ImageEmbedding`` with call accounting (calls and images) for batching checks."""

    def __init__(self, spec: ModelSpec) -> None:
        from fastembed import ImageEmbedding

        if spec.local_dir is not None:
            for required in ("model.onnx", "preprocessor_config.json"):
                if not (spec.local_dir / required).is_file():
                    raise ModelUnavailable(f"LOOKALIKE_MODEL_DIR={spec.local_dir} has no {required}")
        providers = resolve_providers(spec.providers)
        try:
            self._model = ImageEmbedding(
                model_name=spec.name,
                cache_dir=str(spec.cache_dir) if spec.cache_dir else None,
                threads=spec.threads,
                providers=list(providers),
                specific_model_path=str(spec.local_dir) if spec.local_dir else None,
            )
        except Exception as exc:
            hint = "" if spec.local_dir else " (offline? download it once, or set LOOKALIKE_MODEL_DIR to a local copy)"
            raise ModelUnavailable(f"cannot load model {spec.name}: {exc}{hint}") from exc
        self.spec = spec
        self.dim = ImageEmbedding.get_embedding_size(spec.name)
        # What onnxruntime actually runs: it may fall back to the CPU when an accelerator fails to start.
        session = getattr(getattr(self._model, "model", None), "model", None)
        self.providers_in_effect: tuple[str, ...] = tuple(session.get_providers()) if session is not None else ()
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
