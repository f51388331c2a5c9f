"""One structured log line per job outcome (key=value or JSON, by ``LOOKALIKE_LOG_FORMAT``)."""

from __future__ import annotations

import json
import logging
import re
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


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: anything a terminal or a log shipper
# may take for the end of a line or an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROL.sub(_escaped, text)


class OneLineFormatter(logging.Formatter):
    """One record, one line: control characters in the whole formatted record (message, arguments, even a
    traceback) are escaped, so a newline in a shopper's image URL or a product id can never forge a log line."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


def configure_logging(level: str = "INFO") -> None:
    """Plain message lines on stderr for lookalike's loggers (Celery configures its own)."""
    root = logging.getLogger("lookalike")
    if not any(getattr(h, "_lookalike", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._lookalike = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())
