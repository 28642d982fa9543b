"""Fuzzing the API door: no request gets a 5xx, and the next good request is accepted.

- Schemathesis generates valid and invalid bodies and headers for both send routes from the API's
  own OpenAPI document; every answer must be a documented status with a body matching the documented
  schema. Half of the bodies get a real phone number, so that some pass validation and reach the
  publish path (a few per run).
- Hypothesis builds hostile bodies the schema does not suggest (issue 13): nesting hundreds deep
  with `\\u00XX` escapes, invalid UTF-8, huge strings, other scripts' digits, coercible types, past
  and naive times, reused request ids.

Both run with a fixed seed and a bounded number of examples.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis.strategies as st
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import RunningApi, text_request

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

            @seed(20261203)
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
    assert (await api.client.post("/v1/messages", json=text_request(), headers=api.auth)).status_code == 202


HOSTILE_EXAMPLES = 120


def _nested(depth: int, leaf: str) -> str:
    return '{"a": ' * depth + leaf + "}" * depth


def _digits(zero: int, digits: str) -> str:
    return "".join(chr(zero + int(d)) for d in digits)


_json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_field_values = st.one_of(
    _json_values,
    st.sampled_from(["yes", "true", "1", 1, 0, True, 1e308, -1e308, "2020-01-01T00:00:00Z", "2099-01-01T00:00:00",
                     "+1" + _digits(0x0660, "6505551234"), _digits(0x0966, "106540352242922"), "\u0000\u009f"]),
    st.integers(1, 200_000).map(lambda n: "x" * n),
)
_fields = st.sampled_from(["to", "phone_number_id", "request_id", "expires_at", "metadata", "reply_to",
                           "idempotency_key", "message", "accepted_at", "unknown"])
_paths = st.sampled_from([("message", "text", "body"), ("message", "text", "preview_url"),
                          ("message", "location", "latitude"), ("message", "type"),
                          ("message", "interactive", "action", "buttons"), ("message", "template", "components")])


def _with(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node = base
    for part in path[:-1]:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[path[-1]] = value
    return base


_hostile_bodies = st.one_of(
    # A good request with one field replaced, or one nested field, by anything.
    st.tuples(_fields, _field_values).map(lambda t: orjson.dumps({**text_request(), t[0]: t[1]})),
    st.tuples(_paths, _field_values).map(lambda t: orjson.dumps(_with(text_request(), *t))),
    # Deep bodies with a control-character escape (the walk that once hit RecursionError).
    st.tuples(st.sampled_from([40, 300, 500, 700, 1100]),
              st.sampled_from(["metadata", "message", "unknown"])).map(
        lambda t: ('{"to": "+16505551234", "message": {"type": "text", "text": {"body": "x"}}, "'
                   + t[1] + '": ' + _nested(t[0], '"\\u0001"') + "}").encode()),
    # Not JSON, or not an object.
    st.binary(max_size=4096),
    st.binary(max_size=512).map(lambda b: b"\xff" + b),
    st.sampled_from([b"", b"null", b"[]", b"[{}]", b"17", b'"x"', b"{", rb'{"to": "\u0000"}']),
)


def _draw_hostile() -> list[tuple[bytes, bool]]:
    """The bodies, drawn first and posted afterwards: Hypothesis raises the process's recursion limit
    while it runs, which would hide exactly the RecursionError this suite is after."""
    drawn: list[tuple[bytes, bool]] = []

    @seed(20261203)
    @given(body=_hostile_bodies, batch=st.booleans())
    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def draw(body: bytes, batch: bool) -> None:
        drawn.append((b'{"messages": [' + body + b"]}" if batch else body, batch))

    draw()
    return drawn


async def test_hostile_bodies_never_get_a_server_error(api: RunningApi) -> None:
    statuses: dict[int, int] = {}
    for body, batch in _draw_hostile():
        response = await api.client.post("/v1/messages:batch" if batch else "/v1/messages", content=body,
                                         headers=api.auth)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text[:300], body[:200])
        assert response.headers["content-type"] == "application/json"
    assert {400, 422} <= set(statuses)
    assert sum(statuses.values()) >= HOSTILE_EXAMPLES // 2
    assert (await api.client.post("/v1/messages", json=text_request(), headers=api.auth)).status_code == 202
