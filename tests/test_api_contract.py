"""Contract tests generated from the API's own /openapi.json by schemathesis, over every endpoint.

A real uvicorn on 127.0.0.1 serves the app over the fake backend; schemathesis reads the schema from it and
sends generated requests (valid and invalid ones) to every operation. Each answer must not be a 5xx, and its
status code, content type, headers and body must be the ones the schema declares; requests the schema calls
invalid must be refused with a 4xx.

``positive_data_acceptance`` (valid-by-schema requests must succeed) is left out on purpose: the schema
cannot say that random bytes are not a photo, that an image URL must be on the catalogue's CDN, or that a
generated product id exists; those are refused with a documented 4xx, which is the behaviour we want.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks

from lookalike.api import create_app
from lookalike.config.settings import Settings

from api_support import FakeBackend, serving

CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


# One app: schemathesis reads its schema in-process at collection time, and the requests go to the same app
# over real HTTP. (Loading the schema from the running server needs schemathesis' from_fixture, which does
# not work under pytest 9.)
APP = create_app(FakeBackend(), Settings(max_upload_bytes=256 * 1024))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    with serving(APP) as base:
        yield base


@schema.parametrize()
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_endpoint_answers_as_its_schema_says_and_never_with_a_5xx(case: schemathesis.Case, api_url: str) -> None:
    checks_here = CHECKS
    if case.media_type == "multipart/form-data":
        # Multipart carries text only: a "wrong type" schemathesis makes up for a field (an empty array, a
        # number for a string) is often the same bytes as a right one, or no field at all. The explicit tests
        # in test_api.py cover bad form fields instead.
        checks_here = [check for check in CHECKS if check is not checks.negative_data_rejection]
    response = case.call_and_validate(base_url=api_url, checks=checks_here)
    assert response.status_code < 500, response.text


def test_the_schema_lists_every_endpoint(api_url: str) -> None:
    import httpx

    paths = httpx.get(f"{api_url}/openapi.json").json()["paths"]
    assert set(paths) == {
        "/v1/search", "/v1/products/{product_id}/similar", "/v1/duplicates", "/v1/duplicates/decisions",
        "/healthz", "/readyz", "/metrics", "/",
    }  # fmt: skip
    search = paths["/v1/search"]["post"]["requestBody"]["content"]
    assert set(search) == {"multipart/form-data", "application/json"}
