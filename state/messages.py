"""The messages that cross the broker, one dataclass each, with ``to_message``/``from_message``.

* :class:`Job` - one (product, image URL) to download, embed and index. It carries identity only; the
  product's fields live once per product in the registry (:mod:`lookalike.state.registry`) and are read when
  the point is written, so a job enqueued before a price change still indexes the new price.
* :class:`PreparedImage` - fetch -> embed: the job, the image's content hash, and either the image decoded to
  the model's input size (as a small JPEG) or a vector from the embedding cache.
* :class:`EmbeddedPoint` - embed -> index: the job, the content hash and the vector.

Both carry the stage timings so far and when they were sent, so the next stage can add the time the message
waited in its queue. Bytes and vectors travel as base64 (a float32 vector is a quarter of the size of a JSON
list). numpy is imported only where a vector is turned into an array, so the producer side stays light.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# Fixed namespace: point ids must be the same on every machine and every run.
POINT_NAMESPACE = uuid.UUID("6f3b8a52-1c1e-4b8e-9a57-3f6c1d0e2b71")


def point_id_for(product_id: str, image_url: str) -> str:
    """The Qdrant point id of one (product, image URL): the same on every run, so re-runs never duplicate."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{product_id}\x1f{image_url}"))


class MalformedMessage(ValueError):
    """A message that does not have the shape its task expects."""


@dataclass
class Job:
    run_id: str
    product_id: str
    image_url: str
    version: int
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    enqueued_at: float = field(default_factory=time.time)
    # None: the live collection, with the worker's model. A named collection (`lookalike reindex --model` fills
    # its shadow so): embedded with the model that collection records, written there.
    collection: str | None = None

    @property
    def point_id(self) -> str:
        return point_id_for(self.product_id, self.image_url)

    def to_message(self) -> dict[str, Any]:
        message = asdict(self)
        if self.collection is None:  # the live collection: the message carries identity only, as it always has
            del message["collection"]
        return message

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
                collection=None if message.get("collection") is None else str(message["collection"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(f"malformed job message: {exc}") from exc

    def describe(self) -> str:
        """What Flower shows for the task: product id and URL, never bytes."""
        return f"{self.product_id} {self.image_url}"


def encode_vector(vector: Any) -> str:
    """float32 vector -> base64."""
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    return base64.b64decode(text)


def _waited(timings: dict[str, float], sent_at: float, received: float) -> dict[str, float]:
    """The stage timings plus the time the message waited in the queue it just left."""
    result = dict(timings)
    result["queue_wait"] = result.get("queue_wait", 0.0) + max(0.0, received - sent_at)
    return result


@dataclass
class PreparedImage:
    """fetch -> embed: exactly one of ``image`` (JPEG at the model's input size) or ``vector`` (cached)."""

    job: Job
    sha256: str
    image: bytes | None = None
    vector: str | None = None  # base64 float32, from the embedding cache
    timings: dict[str, float] = field(default_factory=dict)
    sent_at: float = field(default_factory=time.time)
    model: str = ""  # with a cached vector: fingerprint of the model that made it (the cache's key)

    @property
    def cached(self) -> bool:
        return self.vector is not None

    def waited(self, received: float) -> dict[str, float]:
        return _waited(self.timings, self.sent_at, received)

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "job": self.job.to_message(),
            "sha256": self.sha256,
            "timings": self.timings,
            "sent_at": self.sent_at,
        }
        if self.vector is not None:
            message["vector"] = self.vector
            message["model"] = self.model
        else:
            message["image"] = encode_bytes(self.image or b"")
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> PreparedImage:
        try:
            vector = message.get("vector")
            return cls(
                job=Job.from_message(message["job"]),
                sha256=str(message["sha256"]),
                image=None if vector is not None else decode_bytes(message["image"]),
                vector=None if vector is None else str(vector),
                timings={str(k): float(v) for k, v in (message.get("timings") or {}).items()},
                sent_at=float(message.get("sent_at") or time.time()),
                model=str(message.get("model") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(f"malformed prepared image: {exc}") from exc


@dataclass
class EmbeddedPoint:
    """embed -> index: the vector of one job's image."""

    job: Job
    sha256: str
    vector: str  # base64 float32
    cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    sent_at: float = field(default_factory=time.time)
    model: str = ""  # fingerprint of the vision model that made the vector ("" from workers before the records)

    def waited(self, received: float) -> dict[str, float]:
        return _waited(self.timings, self.sent_at, received)

    def array(self) -> np.ndarray:
        return decode_vector(self.vector)

    def to_message(self) -> dict[str, Any]:
        return {
            "job": self.job.to_message(),
            "sha256": self.sha256,
            "vector": self.vector,
            "cached": self.cached,
            "timings": self.timings,
            "sent_at": self.sent_at,
            "model": self.model,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> EmbeddedPoint:
        try:
            return cls(
                job=Job.from_message(message["job"]),
                sha256=str(message["sha256"]),
                vector=str(message["vector"]),
                cached=bool(message.get("cached")),
                timings={str(k): float(v) for k, v in (message.get("timings") or {}).items()},
                sent_at=float(message.get("sent_at") or time.time()),
                model=str(message.get("model") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(f"malformed embedded point: {exc}") from exc


def jobs_in(argument: Any) -> list[Job]:
    """The jobs a task's first argument carries: a job, a batch of jobs, or a batch of prepared images / points
    (each holds one). Used to record failures of a message whatever its stage; an unreadable message yields
    none."""
    try:
        if isinstance(argument, dict):
            return [Job.from_message(argument)]
        if isinstance(argument, list):
            return [Job.from_message(item.get("job", item)) for item in argument]
    except (KeyError, TypeError, ValueError, AttributeError):
        return []
    return []


def message_time(argument: Any) -> float | None:
    """When the oldest job in a task's first argument was sent on (or, for a job or a batch of jobs, enqueued)."""
    try:
        if isinstance(argument, dict):
            return float(argument.get("enqueued_at") or 0) or None
        if isinstance(argument, list):
            items = [item for item in argument if isinstance(item, dict)]
            stamps = [float(item.get("sent_at") or item.get("enqueued_at") or 0) for item in items]
            return min((s for s in stamps if s), default=None)
    except (TypeError, ValueError, AttributeError):
        return None
    return None


def describe_batch(argument: list[Any], what: str) -> str:
    """A batch as Flower shows it: its size and first job, never the image bytes or vectors."""
    first = argument[0].job if argument else None
    shown = f"{first.product_id} {first.image_url}" if first else "- -"
    return f"[{len(argument)} {what}: {shown} ...]"


# A fetch batch's jobs Flower lists by name (product id and URL each): enough to find a job, bounded in size.
SHOWN_JOBS = 16


def describe_jobs(jobs: Sequence[Job]) -> str:
    """A fetch batch as Flower shows it: its size, then each job's product id and URL (the first SHOWN_JOBS)."""
    shown = ", ".join(job.describe() for job in jobs[:SHOWN_JOBS])
    return f"[{len(jobs)} jobs: {shown}{' ...' if len(jobs) > SHOWN_JOBS else ''}]"
