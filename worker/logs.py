"""One structured log line per job outcome (key=value or JSON, by ``LOOKALIKE_LOG_FORMAT``)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

job_log = logging.getLogger("lookalike.jobs")

_FIELD_ORDER = ("outcome", "run_id", "product_id", "url", "stage", "reason", "seconds", "detail")


def _kv_value(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_outcome(fields: dict[str, Any], fmt: str) -> str:
    ordered = {k: fields[k] for k in _FIELD_ORDER if fields.get(k) is not None}
    ordered.update({k: v for k, v in fields.items() if k not in ordered and v is not None})
    if fmt == "json":
        return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))
    return " ".join(f"{key}={_kv_value(value)}" for key, value in ordered.items())


class OutcomeLogger:
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def __call__(self, outcome: str, **fields: Any) -> None:
        if job_log.isEnabledFor(logging.INFO):
            job_log.info(format_outcome({"outcome": outcome, **fields}, self.fmt))


def configure_logging(level: str = "INFO") -> None:
    """Plain message lines on stderr for lookalike's loggers (Celery configures its own)."""
    root = logging.getLogger("lookalike")
    if not any(getattr(h, "_lookalike", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._lookalike = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())
