"""The messages that cross the broker, as plain JSON-safe dicts with typed views.

A job is one (product, image URL) to download, embed and index. It carries identity only; the product's
fields live once per product in the registry (see :mod:`lookalike.worker.registry`) and are read when the
point is written, so a job enqueued before a price change still indexes the new price.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lookalike.producer.product import point_id_for


@dataclass
class Job:
    run_id: str
    product_id: str
    image_url: str
    version: int
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    enqueued_at: float = field(default_factory=time.time)

    @property
    def point_id(self) -> str:
        return point_id_for(self.product_id, self.image_url)

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Job:
        try:
            return cls(
                run_id=str(message["run_id"]),
                product_id=str(message["product_id"]),
                image_url=str(message["image_url"]),
                version=int(message["version"]),
                job_id=str(message.get("job_id") or uuid.uuid4().hex),
                enqueued_at=float(message.get("enqueued_at") or time.time()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed job message: {exc}") from exc

    def describe(self) -> str:
        """What Flower shows for the task: product id and URL, never bytes."""
        return f"{self.product_id} {self.image_url}"


def encode_vector(vector: np.ndarray) -> str:
    """float32 vector -> base64 (a quarter of the size of a JSON float list)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    return base64.b64decode(text)
