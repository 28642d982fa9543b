"""Strict at the door (issue 13, findings 3 and 4): what the API must refuse, and how it says so."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest

from pipeline.api.intake import Admitted, Intake, Rejection
from pipeline.config import Settings
from pipeline.contracts import utcnow
from tests.api.conftest import RunningApi, text_request

DEPTH_LIMIT = 32  # pipeline.api.intake.DEPTH_LIMIT


def in_script(digits: str, zero: int) -> str:
    """`digits` written with another script's digits (`zero` is that script's digit zero)."""
    return "".join(chr(zero + int(d)) if d.isdigit() else d for d in digits)


ARABIC_INDIC = "+1" + in_script("6505551234", 0x0660)  # +16505551234 with Arabic-Indic digits after the +1
FULLWIDTH = "+1" + in_script("6505551234", 0xFF10)
DEVANAGARI_ID = in_script("106540352242922", 0x0966)


def nested(depth: int, leaf: Any = "x") -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def problems(result: Admitted | Rejection) -> list[tuple[str, str]]:
    assert isinstance(result, Rejection), result
    return [(f.field, f.rule) for f in result.fields]


def admit(settings: Settings, data: Any) -> Admitted | Rejection:
    return Intake(settings).admit(data, idempotency_key=None, now=utcnow())


@pytest.mark.parametrize("sanitise", [True, False])
def test_a_deep_body_is_a_422_naming_the_field_not_a_recursion_error(api_settings: Settings, sanitise: bool) -> None:
    # ~500 deep with a \u00XX escape: the control-character walk used to hit RecursionError (500).
    body = text_request(metadata=nested(500, "\x01"))
    result = Intake(api_settings).admit(body, idempotency_key=None, now=utcnow(), sanitise=sanitise)
    found = problems(result)
    assert found
    assert all(field.startswith("metadata") for field, _ in found)
    assert ("metadata", "too_deep") in found or not sanitise  # unwalked, pydantic names the first bad level
    deep_message = {"to": "+16505551234", "message": nested(DEPTH_LIMIT + 5)}
    assert problems(Intake(api_settings).admit(deep_message, idempotency_key=None, now=utcnow()))[0] == (
        "message", "too_deep")


def test_a_template_parameter_value_nests_only_so_deep(settings: Settings) -> None:
    parameter = {"type": "currency", "currency": nested(20)}
    body = {"to": "+16505551234", "message": {"type": "template", "template": {
        "name": "order", "language": {"code": "en"}, "components": [{"type": "body", "parameters": [parameter]}]}}}
    [(field, rule)] = problems(admit(settings, body))
    assert (field, rule) == ("message.template.components[0].parameters[0]", "value_error")


@pytest.mark.parametrize(("field", "value"), [("to", ARABIC_INDIC), ("to", FULLWIDTH),
                                              ("phone_number_id", DEVANAGARI_ID)])
def test_phone_numbers_are_ascii_digits_only(settings: Settings, field: str, value: str) -> None:
    assert [f for f, _ in problems(admit(settings, text_request(**{field: value})))] == [field]


def test_an_expires_at_in_the_past_or_without_a_zone_is_refused_under_its_own_name(settings: Settings) -> None:
    past = (utcnow() - timedelta(seconds=1)).isoformat()
    assert problems(admit(settings, text_request(expires_at=past))) == [("expires_at", "datetime_future")]
    assert problems(admit(settings, text_request(expires_at="2099-01-01T00:00:00"))) == [
        ("expires_at", "timezone_aware")]
    assert isinstance(admit(settings, text_request(expires_at="2099-01-01T00:00:00Z")), Admitted)


@pytest.mark.parametrize(("message", "field", "rule"), [
    ({"type": "text", "text": {"body": "x", "preview_url": "yes"}}, "message.text.preview_url", "bool_type"),
    ({"type": "text", "text": {"body": "x", "preview_url": 1}}, "message.text.preview_url", "bool_type"),
    ({"type": "location", "location": {"latitude": True, "longitude": 2.0}}, "message.location.latitude",
     "float_type"),
    ({"type": "location", "location": {"latitude": "45.1", "longitude": 2.0}}, "message.location.latitude",
     "float_type"),
    ({"type": "text", "text": {"body": 17}}, "message.text.body", "string_type"),
])
def test_no_type_coercion(settings: Settings, message: dict[str, Any], field: str, rule: str) -> None:
    assert problems(admit(settings, {"to": "+16505551234", "message": message})) == [(field, rule)]
    # Integers are still latitudes: JSON has one number type.
    ok = {"type": "location", "location": {"latitude": 45, "longitude": 2}}
    assert isinstance(admit(settings, {"to": "+16505551234", "message": ok}), Admitted)


async def test_over_http_a_deep_escaped_body_gets_422_and_the_next_request_202(api: RunningApi) -> None:
    raw = '{"to": "+16505551234", "message": {"type": "text", "text": {"body": "x"}}, "metadata": '
    raw += '{"a": ' * 500 + '"\\u0001"' + "}" * 500 + "}"
    response = await api.client.post("/v1/messages", content=raw.encode(), headers=api.auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["rule"] == "too_deep"
    assert (await api.client.post("/v1/messages", json=text_request(), headers=api.auth)).status_code == 202


async def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(
    api: RunningApi, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = api.base_url.removeprefix("http://").split(":")
    caplog.set_level(logging.INFO)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer dev-key\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"to\": \"+1650")
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.5)
    assert (await api.client.post("/v1/messages", json=text_request(), headers=api.auth)).status_code == 202
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "Exception in ASGI application" not in logged
    assert "Traceback" not in logged
    assert not [r for r in caplog.records if r.exc_info]
