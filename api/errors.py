"""One body for every error the API returns, and the mapping from what went wrong to a status code.

``{"error": reason, "detail": text, "request_id": id}`` whatever the status: the reason is a short stable
token a client can branch on (the same tokens ``QueryRejected`` carries through the whole system), the detail
is for a person, the request id finds the log lines. FastAPI's own validation errors are rewritten into this
shape with the reason of the field that failed (``bad_k``, ``bad_filter``...), so a client never has to parse
two error formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import Scope

from lookalike.api.observe import REQUEST_ID_HEADER, request_id_var
from lookalike.state.errors import BackendTimeout, Overloaded, Rejected, Unavailable

# What went wrong -> (status, reason token, detail when the error has none), for every error a route lets
# through: the first of the error's classes found here decides. Anything else is a bug: a 500.
ERROR_STATUS: dict[type[Exception], tuple[int, str | None, str]] = {
    BackendTimeout: (504, "timeout", "no query worker answered in time"),
    Overloaded: (503, "overloaded", "too many searches in flight; retry shortly"),
    Unavailable: (503, "unavailable", "the search backend is unavailable"),
    Rejected: (422, None, "refused"),  # the reason is the refusal's own
}
# A refusal's reason -> status; every other refusal is a 422.
REASON_STATUS = {
    "unknown_product": 404,
    "too_large": 413,
}


class ApiError(Exception):
    """An answer other than 2xx, raised anywhere in a route and turned into the one error body."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason, detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}


def api_error(exc: Exception) -> ApiError | None:
    """``exc`` as the answer :data:`ERROR_STATUS` gives it (None: not in the table)."""
    found = next((ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in ERROR_STATUS), None)
    if found is None:
        return None
    status, reason, fallback = found
    if isinstance(exc, Rejected):
        return ApiError(REASON_STATUS.get(exc.reason, status), exc.reason, exc.detail)
    detail = getattr(exc, "detail", "") or fallback
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) and status == 503 else None
    return ApiError(status, reason or "error", detail, headers)

# The field a validation error names -> the reason SearchRequest.validate would give for it.
FIELD_REASON = {
    "k": "bad_k",
    "offset": "bad_offset",
    "mode": "bad_mode",
    "text": "bad_text",
    "image_url": "bad_scheme",
    "product_id": "bad_product_id",
    "filters": "bad_filter",
    "category": "bad_filter",
    "min_price": "bad_filter",
    "max_price": "bad_filter",
    "min_score": "bad_filter",
    "image": "bad_image_field",
}


def request_id_of(scope: Scope) -> str:
    state = scope.get("state") or {}
    return str(state.get("request_id") or request_id_var.get())


def error_response(
    scope: Scope, status: int, reason: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    request_id = request_id_of(scope)
    body = {"error": reason, "detail": detail, "request_id": request_id, **extra}
    return JSONResponse(body, status_code=status, headers={REQUEST_ID_HEADER: request_id, **(headers or {})})


def reason_for_validation(errors: Sequence[Any]) -> tuple[str, str]:
    """(reason, detail) for a list of pydantic / FastAPI validation errors: the first error decides."""
    if not errors:
        return "bad_request", "the request is not valid"
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    reason = "bad_request"
    for part in location:
        if part in FIELD_REASON:
            reason = FIELD_REASON[part]
            break
    else:
        if first.get("type") == "extra_forbidden" or first.get("type") == "missing":
            reason = "bad_query"
        if first.get("type") in ("json_invalid", "model_attributes_type", "dict_type", "model_type"):
            reason = "bad_json"
    field = ".".join(location) or "body"
    return reason, f"{field}: {first.get('msg', 'invalid')}"
