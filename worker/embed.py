"""Embed stage: RGB images -> L2-normalised vectors, through fastembed's ONNX image model.

The loading (spec, local directory, providers, cache or download, per-process cache) is
:class:`lookalike.worker.model.OnnxModel`'s; this module names the image model's part of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lookalike.config.settings import Settings
from lookalike.worker.model import ModelUnavailable, OnnxModel, resolve_providers

# ModelUnavailable is named here too: callers catching a model outage import it with the embed stage.
__all__ = ["Embedder", "ModelUnavailable", "OnnxRuntimeInEffect", "model_dimension", "onnx_runtime_in_effect"]


class Embedder(OnnxModel):
    """fastembed's ``ImageEmbedding`` for ``LOOKALIKE_MODEL`` (or the directory ``LOOKALIKE_MODEL_DIR``)."""

    kind = "model"
    name_setting = "model"
    dir_setting = "model_dir"
    required_files = ("model.onnx", "preprocessor_config.json")

    @classmethod
    def fastembed_class(cls) -> Any:
        from fastembed import ImageEmbedding

        return ImageEmbedding

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """One model call for the whole list: an (N, dim) float32 array of unit vectors."""
        return self._run(images)


@dataclass(frozen=True)
class OnnxRuntimeInEffect:
    """What the embedding processes run the model with (for ``lookalike status``)."""

    providers: tuple[str, ...]  # as configured, in order of preference
    available: tuple[str, ...]  # what this onnxruntime build offers
    threads: int  # ONNX threads per embedding process
    threads_chosen: bool  # True when LOOKALIKE_ONNX_THREADS is 0 and lookalike chose the count
    processes: int  # embedding processes per worker
    usable_cpus: int


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


def model_dimension(name: str) -> int:
    """The vector size of a fastembed image model, without loading it."""
    return int(Embedder.fastembed_class().get_embedding_size(name))
