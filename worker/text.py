"""Text queries: strings -> L2-normalised vectors in the image vectors' space, through fastembed's CLIP text model.

``Qdrant/clip-ViT-B-32-text`` is the text tower of the CLIP ViT-B/32 whose vision tower embeds the catalogue,
so a text vector can be searched against the image vectors directly. fastembed hands back the text tower's
raw ``text_embeds`` (it does not normalise CLIP text), so :class:`TextEmbedder` normalises them itself.

Like the image model, it is loaded lazily, once per process, and again after a fork
(:mod:`lookalike.state.process`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.config.settings import Settings
from lookalike.state.process import process_cache
from lookalike.worker.embed import CPU, ModelUnavailable, resolve_providers

# What fastembed's tokenizer loader and the CLIP text model read from a local directory (config.json is
# optional to fastembed but part of every downloaded copy; special_tokens_map.json is optional too).
TEXT_MODEL_FILES = ("model.onnx", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class TextSpec:
    name: str
    local_dir: Path | None
    cache_dir: Path | None
    threads: int
    providers: tuple[str, ...] = (CPU,)

    @classmethod
    def from_settings(cls, settings: Settings, *, threads: int | None = None) -> TextSpec:
        """The model as the settings describe it; ``threads`` for the query processes' own count."""
        return cls(
            settings.text_model,
            settings.text_model_dir,
            settings.model_cache_dir,
            threads or settings.effective_onnx_threads,
            settings.onnx_provider_names,
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class TextEmbedder:
    """One fastembed ``TextEmbedding`` with call accounting (calls and texts)."""

    def __init__(self, spec: TextSpec) -> None:
        from fastembed import TextEmbedding

        if spec.local_dir is not None:
            if not spec.local_dir.is_dir():
                raise ModelUnavailable(f"LOOKALIKE_TEXT_MODEL_DIR={spec.local_dir} is not a directory")
            for required in TEXT_MODEL_FILES:
                if not (spec.local_dir / required).is_file():
                    raise ModelUnavailable(f"LOOKALIKE_TEXT_MODEL_DIR={spec.local_dir} has no {required}")
        providers = resolve_providers(spec.providers)
        try:
            self.dim = TextEmbedding.get_embedding_size(spec.name)
            self._model = TextEmbedding(
                model_name=spec.name,
                cache_dir=str(spec.cache_dir) if spec.cache_dir else None,
                threads=spec.threads,
                providers=list(providers),
                specific_model_path=str(spec.local_dir) if spec.local_dir else None,
            )
        except Exception as exc:
            hint = (
                ""
                if spec.local_dir
                else " (offline? download it once, or set LOOKALIKE_TEXT_MODEL_DIR to a local copy)"
            )
            raise ModelUnavailable(f"cannot load text model {spec.name}: {_one_line(exc)}{hint}") from exc
        self.spec = spec
        session = getattr(getattr(self._model, "model", None), "model", None)
        self.providers_in_effect: tuple[str, ...] = tuple(session.get_providers()) if session is not None else ()
        self.calls = 0
        self.texts = 0
        self.seconds = 0.0

    def embed(self, texts: list[str]) -> np.ndarray:
        """One model call for the whole list: an (N, dim) float32 array of unit vectors (a text the model
        maps to the zero vector, e.g. nothing but punctuation for a tiny test model, stays zero)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        started = time.perf_counter()
        raw = np.asarray(list(self._model.embed(list(texts), batch_size=len(texts))), dtype=np.float32)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self.texts += len(texts)
        if raw.shape != (len(texts), self.dim):
            raise ModelUnavailable(f"text model returned shape {raw.shape}, expected ({len(texts)}, {self.dim})")
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.divide(raw, norms, out=np.zeros_like(raw), where=norms > 0).astype(np.float32, copy=False)


def get_text_embedder(spec: TextSpec) -> TextEmbedder:
    """The process's text embedder for ``spec``, loaded on first use (and again after a fork)."""
    return process_cache.get(("text_embedder", spec), lambda: TextEmbedder(spec))
