"""Embeddings cached under the image's content hash: the same bytes are embedded once, whatever their URL
and however many products share them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import redis


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_fingerprint(name: str, local_dir: str | None) -> str:
    """Vectors from different models (or model directories) must never be mixed up."""
    return hashlib.sha1(f"{name}\x1f{local_dir or ''}".encode()).hexdigest()[:12]


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
