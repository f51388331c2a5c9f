"""Text queries: strings -> L2-normalised vectors in the image vectors' space, through fastembed's CLIP text model.

``Qdrant/clip-ViT-B-32-text`` is the text tower of the CLIP ViT-B/32 whose vision tower embeds the catalogue,
so a text vector can be searched against the image vectors directly. fastembed hands back the text tower's
raw ``text_embeds`` (it does not normalise CLIP text), so :class:`TextEmbedder` normalises them itself.

The loading is :class:`lookalike.worker.model.OnnxModel`'s; this module names the text model's part of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lookalike.worker.model import OnnxModel

# What fastembed's tokenizer loader and the CLIP text model read from a local directory (config.json is
# optional to fastembed but part of every downloaded copy; special_tokens_map.json is optional too).
TEXT_MODEL_FILES = ("model.onnx", "tokenizer.json", "tokenizer_config.json")


class TextEmbedder(OnnxModel):
    """fastembed's ``TextEmbedding`` for ``LOOKALIKE_TEXT_MODEL`` (or ``LOOKALIKE_TEXT_MODEL_DIR``)."""

    kind = "text model"
    name_setting = "text_model"
    dir_setting = "text_model_dir"
    required_files = TEXT_MODEL_FILES

    @classmethod
    def fastembed_class(cls) -> Any:
        from fastembed import TextEmbedding

        return TextEmbedding

    def embed(self, texts: list[str]) -> np.ndarray:
        """One model call for the whole list: an (N, dim) float32 array of unit vectors (a text the model
        maps to the zero vector, e.g. nothing but punctuation for a tiny test model, stays zero)."""
        raw = self._run(list(texts))
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.divide(raw, norms, out=np.zeros_like(raw), where=norms > 0).astype(np.float32, copy=False)
