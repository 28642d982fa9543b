"""Schema-based fuzzing: requests generated from the API's own OpenAPI document never get a 5xx.

Schemathesis generates valid and invalid bodies and headers for both send routes; every answer must
be a documented status with a body matching the documented schema. Half of the bodies get a
real phone number, so that some pass validation and reach the publish path (a few per run).
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import RunningApi

pytestmark = [
    pytest.mark.slow,
    # schemathesis' own strategies use `random`; nothing this test can change.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

EXAMPLES = 25  # per route and generation mode: ~100 requests, well under a minute


def _fuzz(base_url: str, document: dict[str, Any]) -> dict[int, int]:
    schema = schemathesis.openapi.from_dict(document)
    statuses: dict[int, int] = {}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = (result.ok() for result in schema.get_all_operations())  # type: ignore[union-attr]
    # The send routes; the read routes the document also lists are the store's, forwarded (tests/store).
    for operation in (o for o in operations if o.method.upper() == "POST"):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode), real_number=st.booleans())
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case[Any], real_number: bool) -> None:
                if real_number and isinstance(case.body, dict):
                    messages = case.body.get("messages")
                    for item in messages if isinstance(messages, list) else [case.body]:
                        if isinstance(item, dict):
                            item["to"] = "+16505551234"
                            item.pop("phone_number_id", None)
                response = case.call_and_validate(
                    base_url=base_url, headers={"Authorization": "Bearer dev-key"}, checks=checks
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            run()
    return statuses


async def test_generated_requests_never_get_a_server_error(api: RunningApi) -> None:
    document = (await api.client.get("/openapi.json")).json()
    # schemathesis calls synchronously; the API runs on this event loop, so fuzz from a thread.
    statuses = await asyncio.to_thread(_fuzz, api.base_url, document)
    assert not any(status >= 500 for status in statuses)
    assert 422 in statuses  # it did reach validation
    assert sum(statuses.values()) >= 50
