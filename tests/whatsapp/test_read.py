"""The `read` request: Graph's mark-as-read call, built by the payload builder and sent by the client."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.contracts import SendRequest
from pipeline.sandbox.testing import running_sandbox
from pipeline.whatsapp import GraphApiError, WhatsAppClient
from pipeline.whatsapp.payloads import message_payload
from tests.whatsapp.conftest import NUMBER, USER, wa_settings


def read_request(wamid: str = "wamid.INBOUND1", typing: bool = True) -> SendRequest:
    return SendRequest.model_validate(
        {"to": USER, "message": {"type": "read", "message_id": wamid, "typing_indicator": typing}}
    )


def test_a_read_request_becomes_graphs_status_read_call() -> None:
    assert message_payload(read_request(), callback_data="req_1|00-abc") == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.INBOUND1",
        "typing_indicator": {"type": "text"},
    }
    assert "typing_indicator" not in message_payload(read_request(typing=False))


def test_a_read_request_needs_the_inbound_wamid() -> None:
    with pytest.raises(ValidationError) as caught:
        SendRequest.model_validate({"to": USER, "message": {"type": "read", "message_id": ""}})
    assert caught.value.errors()[0]["loc"] == ("message", "read", "message_id")


async def test_the_client_marks_read_against_the_sandbox() -> None:
    async with (
        running_sandbox(latency_median_seconds=0) as sandbox,
        WhatsAppClient(wa_settings(sandbox.base_url, access_token=sandbox.access_token)) as client,
    ):
        sent = await client.send_message(read_request("wamid.HBgLREPLY", typing=True))
        assert (sent.wamid, sent.http_status) == ("wamid.HBgLREPLY", 200)
        stats = await sandbox.control.stats()
        assert [(r["phone_number_id"], r["message_id"], r["typing_indicator"]) for r in stats["reads"]] == [
            (NUMBER, "wamid.HBgLREPLY", True)
        ]
        assert await sandbox.control.sends() == []  # marking read sends no message


async def test_the_sandbox_refuses_a_malformed_typing_indicator() -> None:
    async with (
        running_sandbox(latency_median_seconds=0) as sandbox,
        WhatsAppClient(wa_settings(sandbox.base_url, access_token=sandbox.access_token)) as client,
    ):
        request = read_request()
        bad = message_payload(request) | {"typing_indicator": {"type": "voice"}}
        with pytest.raises(GraphApiError) as caught:
            await client._post_message(NUMBER, bad)
        assert caught.value.code == 131009
