"""The producer API takes a recipient named by BSUID, as Meta's send call does, and refuses both or neither."""

from __future__ import annotations

import orjson
import pytest

from pipeline.contracts import SendRequest
from tests.api.conftest import RunningApi, read_topic

BSUID = "US.13491208655302741918"
TEXT = {"type": "text", "text": {"body": "Your order shipped"}}


async def test_a_request_addressed_by_bsuid_is_accepted_and_on_the_topic_unchanged(api: RunningApi) -> None:
    response = await api.client.post(
        "/v1/messages", json={"recipient_user_id": BSUID, "message": TEXT}, headers=api.auth
    )
    assert response.status_code == 202, response.text
    [record] = await read_topic(api.service.settings, api.topics.send_requests, at_least=1)
    request = SendRequest.model_validate_json(record.value)
    assert request.request_id == response.json()["request_id"]
    assert (request.recipient_user_id, request.to) == (BSUID, None)
    assert orjson.loads(record.value).get("to") is None


@pytest.mark.parametrize(
    ("recipient", "rule"),
    [
        ({"to": "+16505551234", "recipient_user_id": BSUID}, "recipient_ambiguous"),
        ({}, "missing"),
        ({"to": None, "recipient_user_id": None}, "missing"),
    ],
    ids=["both", "neither", "both-null"],
)
async def test_both_or_neither_recipient_gets_422_naming_the_field_and_rule(
    api: RunningApi, recipient: dict[str, str | None], rule: str
) -> None:
    response = await api.client.post("/v1/messages", json={**recipient, "message": TEXT}, headers=api.auth)
    assert response.status_code == 422, response.text
    [field] = response.json()["error"]["fields"]
    assert (field["field"], field["rule"]) == ("to", rule)
    assert "recipient_user_id" in field["message"]
    assert await read_topic(api.service.settings, api.topics.send_requests) == []


async def test_a_malformed_bsuid_gets_422_naming_recipient_user_id(api: RunningApi) -> None:
    response = await api.client.post(
        "/v1/messages", json={"recipient_user_id": "16505551234", "message": TEXT}, headers=api.auth
    )
    assert response.status_code == 422, response.text
    [field] = response.json()["error"]["fields"]
    assert field["field"] == "recipient_user_id"
    assert "business-scoped user id" in field["message"]
