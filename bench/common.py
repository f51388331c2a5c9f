"""What the benchmarks share: their scratch directory, their model and the environment they run lookalike in."""

from __future__ import annotations

import os
from pathlib import Path


def bench_environment(scratch: Path, redis_db: int, **extra: str) -> tuple[dict[str, str], str]:
    """(environment for lookalike commands and this process, which model): the real model when
    LOOKALIKE_MODEL_DIR points at one, else the tiny test model built in ``scratch``. Also applied to
    ``os.environ``, so lookalike code imported by the benchmark sees the same settings."""
    model_dir = os.environ.get("LOOKALIKE_MODEL_DIR")
    model_kind = "real" if model_dir else "tiny test model"
    if not model_dir:
        from lookalike.testing.tiny_model import build_tiny_model

        model_dir = str(build_tiny_model(scratch / "model"))
    env = {
        **os.environ,
        "LOOKALIKE_BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "LOOKALIKE_KEY_PREFIX": "lookalike-bench",
        "LOOKALIKE_MODEL_DIR": model_dir,
        "LOOKALIKE_LOG_LEVEL": "WARNING",
        **extra,
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("LOOKALIKE_")})
    return env, model_kind
