"""One rejection type for everything lookalike refuses: a download, an image, an event, a query.

A rejection carries a short stable ``reason`` token (counted in metrics, shown in ``failures``, returned by the
API), a human ``detail``, and the ``stage`` that refused. Subclasses only narrow the stage or add what a caller
needs to decide on a retry; they never re-declare the fields.
"""

from __future__ import annotations

from typing import Any

# Stage names, as recorded in the failure log, the ledger and job outcome log lines.
FETCH = "fetch"
DECODE = "decode"
EMBED = "embed"
INDEX = "index"
QUERY = "query"
EVENT = "event"
TASK = "task"


class Rejected(ValueError):
    """Refused for a reason retrying the same input will not fix (unless ``transient`` says otherwise).

    Its args are exactly (reason, detail), so it survives a JSON round trip through a result backend.
    """

    stage: str = TASK
    transient: bool = False

    def __init__(self, reason: str, detail: str = "", *, stage: str | None = None) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        if stage is not None:
            self.stage = stage

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

    def as_data(self) -> dict[str, Any]:
        """The refusal as a result value: ``{"error": reason, "detail": ...}`` (what the query task returns)."""
        return {"error": self.reason, "detail": self.detail}
