"""Embeddings cached under the model's fingerprint and the image's content hash: the same bytes are embedded
once per model, whatever their URL and however many products share them, and a vector of one model is never
handed out for another (the key is the model files' digest, :mod:`lookalike.worker.fingerprint`, so replacing
the files in the same directory starts a new cache too)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import redis


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    def __init__(self, client: redis.Redis, prefix: str, model_key: str, ttl: int) -> None:
        self._redis = client
        self._prefix = f"{prefix}:emb:{model_key}:"
        self.ttl = ttl

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def get(self, digest: str) -> np.ndarray | None:
        if not self.enabled:
            return None
        raw = self._redis.get(self._prefix + digest)
        return np.frombuffer(raw, dtype="<f4").copy() if raw else None  # type: ignore[arg-type]

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        if not self.enabled or not vectors:
            return
        pipe = self._redis.pipeline(transaction=False)
        for digest, vector in vectors.items():
            pipe.set(self._prefix + digest, np.asarray(vector, dtype="<f4").tobytes(), ex=self.ttl)
        pipe.execute()
