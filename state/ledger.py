"""Runs and counters in Redis: what was enqueued, indexed, failed, and how long each stage took.

Every job ends in exactly one outcome - ``indexed``, ``failed`` (with a reason) or ``superseded`` (the
catalogue changed while it was queued and the point is no longer wanted). Outcomes are counted exactly once
even when a job is delivered twice: a per-run set of finished job ids guards the counters (Lua, atomic).
A run is finished when indexed + failed + superseded == enqueued.

The same writes keep cluster-wide totals and stage-time histograms, which ``lookalike metrics`` exports.
"""

from __future__ import annotations

import bisect
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from lookalike.state.outcomes import FAILED, JOB_OUTCOMES

OUTCOMES = JOB_OUTCOMES
STAGES = ("download", "decode", "embed", "upsert", "duplicates", "queue_wait")  # duplicates: the index stage's check
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_RECORD_OUTCOMES = """
local counted = 0
for i = 2, #ARGV do
  local parts = {}
  for part in string.gmatch(ARGV[i], '[^\\t]+') do parts[#parts + 1] = part end
  if redis.call('SADD', KEYS[2], parts[1]) == 1 then
    counted = counted + 1
    for j = 2, #parts do
      redis.call('HINCRBY', KEYS[1], parts[j], 1)
      redis.call('HINCRBY', KEYS[3], parts[j], 1)
    end
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return counted
"""


@dataclass
class Outcome:
    job_id: str
    run_id: str
    status: str
    reason: str | None = None
    cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def fields(self) -> list[str]:
        names = [self.status]
        if self.status == FAILED and self.reason:
            names.append(f"{FAILED}:{self.reason}")
        if self.cached:
            names.append("cache_hits")
        return names


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def _decode(mapping: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in mapping.items()
    }


def _number(value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        return float(value)


class Ledger:
    def __init__(self, client: redis.Redis, prefix: str, ttl: int) -> None:
        self._redis = client
        self._prefix = prefix
        self.ttl = ttl
        self._record = client.register_script(_RECORD_OUTCOMES)

    # keys
    def run_key(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}"

    def _done_key(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}:done"

    @property
    def runs_key(self) -> str:
        return f"{self._prefix}:runs"

    @property
    def stats_key(self) -> str:
        return f"{self._prefix}:stats"

    @property
    def hist_key(self) -> str:
        return f"{self._prefix}:hist"

    # writes
    def start_run(self, kind: str, source: str, run_id: str | None = None, **meta: Any) -> str:
        run_id = run_id or new_run_id()
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.hsetnx(self.run_key(run_id), "created", now)
        fields: dict[Any, Any] = {"kind": kind, "source": source, **meta}
        pipe.hset(self.run_key(run_id), mapping=fields)
        pipe.expire(self.run_key(run_id), self.ttl)
        pipe.zadd(self.runs_key, {run_id: now}, nx=True)
        pipe.execute()
        return run_id

    def add(self, run_id: str, counts: dict[str, int | float], *, global_too: bool = True) -> None:
        """Plain increments (producer-side counts: enqueued, products, skipped rows ...)."""
        if not counts:
            return
        pipe = self._redis.pipeline(transaction=False)
        for name, value in counts.items():
            if not value:
                continue
            if isinstance(value, float):
                pipe.hincrbyfloat(self.run_key(run_id), name, value)
            else:
                pipe.hincrby(self.run_key(run_id), name, value)
                if global_too:
                    pipe.hincrby(self.stats_key, name, value)
        pipe.expire(self.run_key(run_id), self.ttl)
        pipe.execute()

    def set_meta(self, run_id: str, **values: Any) -> None:
        fields: dict[Any, Any] = dict(values)
        self._redis.hset(self.run_key(run_id), mapping=fields)

    def record(self, outcomes: Iterable[Outcome]) -> None:
        """Count each outcome once (a redelivered job is not counted again) and add its stage timings."""
        by_run: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            by_run[outcome.run_id].append(outcome)
        if not by_run:
            return
        pipe = self._redis.pipeline(transaction=False)
        for run_id, items in by_run.items():
            args: list[Any] = [self.ttl] + ["\t".join([o.job_id, *o.fields()]) for o in items]
            self._record(keys=[self.run_key(run_id), self._done_key(run_id), self.stats_key], args=args, client=pipe)
            sums: dict[str, float] = defaultdict(float)
            for outcome in items:
                for stage, seconds in outcome.timings.items():
                    sums[stage] += seconds
                    self._observe(pipe, stage, seconds)
            for stage, total in sums.items():
                pipe.hincrbyfloat(self.run_key(run_id), f"seconds:{stage}", total)
        pipe.execute()

    def batch_time(self, stage: str, seconds: float, run_ids: Iterable[str]) -> None:
        """Time spent once per batch (upsert): one histogram observation, added to each run the batch served."""
        pipe = self._redis.pipeline(transaction=False)
        self._batch_time(pipe, stage, seconds, run_ids)
        pipe.execute()

    def _batch_time(self, pipe: Any, stage: str, seconds: float, run_ids: Iterable[str]) -> None:
        for run_id in set(run_ids):
            pipe.hincrbyfloat(self.run_key(run_id), f"seconds:{stage}", seconds)
        self._observe(pipe, stage, seconds)

    def _observe(self, pipe: Any, stage: str, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        bucket = f"{BUCKETS[index]:g}" if index < len(BUCKETS) else "+Inf"
        pipe.hincrby(self.hist_key, f"{stage}|{bucket}", 1)
        pipe.hincrbyfloat(self.hist_key, f"{stage}|sum", seconds)

    def count_embedding(self, per_run_images: dict[str, int], seconds: float) -> None:
        """One model call covering images of these runs."""
        pipe = self._redis.pipeline(transaction=False)
        for run_id, images in per_run_images.items():
            pipe.hincrby(self.run_key(run_id), "embed_calls", 1)
            pipe.hincrby(self.run_key(run_id), "embedded", images)
        pipe.hincrby(self.stats_key, "embed_calls", 1)
        pipe.hincrby(self.stats_key, "embedded", sum(per_run_images.values()))
        self._batch_time(pipe, "embed", seconds, per_run_images)
        pipe.execute()

    def count_delivery(self, task_id: str, attempt: int) -> int:
        """How many times this attempt of a task message was delivered (called only for handed-back messages,
        so the normal path costs no round trip). Kept a day: a message handed back for longer is long gone."""
        key = f"{self._prefix}:deliveries:{task_id}:{attempt}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 24 * 3600)
        return int(pipe.execute()[0])

    def count_global(self, counts: dict[str, int]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for name, value in counts.items():
            pipe.hincrby(self.stats_key, name, value)
        pipe.execute()

    # reads
    def run(self, run_id: str) -> dict[str, Any] | None:
        raw = _decode(self._redis.hgetall(self.run_key(run_id)))
        if not raw:
            return None
        data: dict[str, Any] = {}
        for name, value in raw.items():
            data[name] = value if name in ("kind", "source", "status", "error") else _number(value)
        data["run_id"] = run_id
        return data

    def run_ids(self, limit: int = 20) -> list[str]:
        ids = self._redis.zrevrange(self.runs_key, 0, limit - 1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in _decode(self._redis.hgetall(self.stats_key)).items()}

    def histograms(self) -> dict[str, dict[str, float]]:
        """stage -> {bucket upper bound or 'sum': value}, bucket counts not cumulative."""
        result: dict[str, dict[str, float]] = defaultdict(dict)
        for name, value in _decode(self._redis.hgetall(self.hist_key)).items():
            stage, _, bucket = name.partition("|")
            result[stage][bucket] = float(value)
        return dict(result)


def finished(run: dict[str, Any]) -> int:
    return int(sum(run.get(name, 0) for name in OUTCOMES))

