"""The duplicate listings over HTTP: the report (``GET /v1/duplicates``) and people's decisions
(``POST /v1/duplicates/decisions``), under the same keys and with the same error body as the rest of the API.

Both read and write Redis only (pairs, decisions, the registry: :mod:`lookalike.state.duplicates`), never the
store or a worker, through a :class:`DuplicateDesk`; the routes call it from a worker thread because Redis
calls block. Redis unreachable is a 503 with ``Retry-After``, like a search whose broker is down.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lookalike.api.errors import error_response, reason_for_validation
from lookalike.api.models import ErrorOut
from lookalike.config.settings import Settings
from lookalike.state.search import MAX_OFFSET

MAX_GROUPS = 100
RETRY_AFTER = 5


class UnknownProducts(Exception):
    def __init__(self, product_ids: list[str]) -> None:
        super().__init__(", ".join(product_ids))
        self.product_ids = product_ids


class DuplicateDesk:
    """The report and the decisions, from this process's light state context (built on first use)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._state: Any = None

    @property
    def state(self) -> Any:
        if self._state is None:
            from lookalike.state.context import StateContext

            self._state = StateContext(self.settings)
        return self._state

    def report(self, *, min_score: float | None, category: str | None, offset: int, limit: int) -> dict[str, Any]:
        from lookalike.state.duplicate_groups import report

        state = self.state
        return report(
            state.duplicates, state.registry, self.settings,
            min_score=min_score, category=category, offset=offset, limit=limit,
        )  # fmt: skip

    def decide(self, a: str, b: str, decision: str) -> dict[str, Any]:
        from lookalike.state.duplicate_groups import unknown_products

        unknown = unknown_products(self.state.registry, [a, b])
        if unknown:
            raise UnknownProducts(unknown)
        made = self.state.duplicates.decide(a, b, decision)
        return {"a": made.a, "b": made.b, "decision": made.decision, "at": made.at}


# ----------------------------------------------------------------------------------------------- bodies
class DecisionIn(BaseModel):
    """A person's decision on two products."""

    model_config = ConfigDict(extra="forbid", strict=True)

    a: str = Field(min_length=1, max_length=200, description="A product id.")
    b: str = Field(min_length=1, max_length=200, description="Another product id.")
    decision: Literal["distinct", "same"] = Field(
        description="distinct: different products, never reported again; same: kept grouped."
    )


class DecisionOut(BaseModel):
    a: str
    b: str
    decision: Literal["distinct", "same"]
    at: float = Field(description="When it was recorded (Unix seconds).")


class ProductOut(BaseModel):
    product_id: str
    name: str | None
    price: str | None
    product_url: str | None
    category: str | None
    image_url: str | None = Field(description="The product's first image (the catalogue's own URL).")


class PairOut(BaseModel):
    a: str
    b: str
    score: float | None = Field(description="Cosine score of the best image pair (None: marked same, no pair).")
    a_image: str | None
    b_image: str | None
    threshold: float = Field(description="The threshold that applied to this pair.")
    threshold_source: str = Field(description="Where it came from: the setting, a category override, min_score.")
    decision: Literal["distinct", "same"] | None


class GroupOut(BaseModel):
    products: list[ProductOut]
    score: float | None = Field(description="The best pair's score (the group's evidence).")
    best_pair: PairOut
    pairs: list[PairOut]


class DuplicatesOut(BaseModel):
    groups: list[GroupOut] = Field(description="Best evidence first.")
    total: int = Field(description="Groups in all (before offset and limit).")
    offset: int
    min_score: float
    category_min_scores: dict[str, float]


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return error_response(
        request.scope, 503, "unavailable", f"the broker (Redis) does not answer: {exc}",
        {"Retry-After": str(RETRY_AFTER)},
    )  # fmt: skip


def duplicates_router(desk: DuplicateDesk, *, auth_errors: tuple[int, ...] = ()) -> APIRouter:
    """The two routes, to include in the /v1 router (which carries the API-key dependency)."""
    import redis

    router = APIRouter()
    decision_schema = DecisionIn.model_json_schema()

    def described(*statuses: int) -> dict[int | str, dict[str, Any]]:
        text = {
            401: "No or a wrong X-API-Key (only when LOOKALIKE_API_KEYS is set).",
            404: "A product id the registry does not hold.",
            415: "Not JSON.",
            422: "Missing or invalid fields.",
            503: "Redis does not answer (see Retry-After).",
        }
        return {status: {"model": ErrorOut, "description": text[status]} for status in statuses}

    @router.get(
        "/duplicates",
        summary="Groups of duplicate listings, best evidence first",
        response_model=DuplicatesOut,
        responses=described(*auth_errors, 422, 503),
    )
    async def duplicates(
        request: Request,
        min_score: Annotated[float | None, Query(ge=0, le=1, allow_inf_nan=False)] = None,
        category: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_GROUPS)] = 20,
    ) -> JSONResponse:
        """Products that show the same photo, grouped (connected pairs); each group with its products, its
        best image pair and the threshold that applied. ``min_score`` raises the threshold for this report."""
        try:
            data = await anyio.to_thread.run_sync(
                lambda: desk.report(min_score=min_score, category=category, offset=offset, limit=limit)
            )
        except redis.RedisError as exc:
            return _unavailable(request, exc)
        return JSONResponse(data)

    @router.post(
        "/duplicates/decisions",
        summary="Record a person's decision on two products",
        response_model=DecisionOut,
        responses=described(*auth_errors, 404, 415, 422, 503),
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": decision_schema}}}
        },
    )
    async def decisions(request: Request) -> JSONResponse:
        """``distinct``: the two are different products and are never reported again (through re-ingests and
        scans); ``same``: they stay grouped. Marking a pair again replaces its decision."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return error_response(request.scope, 415, "unsupported_media_type", "send JSON: {a, b, decision}")
        try:
            body = DecisionIn.model_validate_json(await request.body())
        except ValidationError as exc:
            reason, detail = reason_for_validation(exc.errors())
            return error_response(request.scope, 422, reason, detail)
        if body.a == body.b:
            return error_response(request.scope, 422, "bad_decision", "a and b: give two different product ids")
        try:
            made = await anyio.to_thread.run_sync(lambda: desk.decide(body.a, body.b, body.decision))
        except UnknownProducts as exc:
            return error_response(
                request.scope, 404, "unknown_product", f"not in the registry: {', '.join(exc.product_ids)}"
            )
        except redis.RedisError as exc:
            return _unavailable(request, exc)
        return JSONResponse(made)

    return router
