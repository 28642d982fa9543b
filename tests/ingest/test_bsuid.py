"""BSUIDs end to end: the sandbox posts Meta's BSUID shapes, the ingest keeps them on its records.

A user who shows a username instead of their number writes with only a BSUID: that is an inbound
message on `inbound.messages`, keyed by the BSUID, never a dead letter. Statuses carry the recipient's
BSUID from the status or `contacts[]`, and a send addressed by BSUID (which Meta accepts) comes back
as statuses naming it.
"""

from __future__ import annotations

import httpx
import pytest

from pipeline.contracts import InboundMessage
from pipeline.sandbox import ids
from pipeline.sandbox.testing import running_sandbox
from tests.ingest.conftest import APP_SECRET, NUMBER, Running, eventually, read_topic

pytestmark = pytest.mark.kafka

FAST = {"sent_after_seconds": 0, "delivered_after_seconds": 0.02, "read_after_seconds": 0.04, "read_probability": 1.0}


async def test_bsuid_only_users_and_bsuid_sends_reach_the_records(ingest: Running) -> None:
    url = str(ingest.http.base_url.join("/webhooks/whatsapp"))
    async with running_sandbox(webhook_url=url, app_secret=APP_SECRET, phone_number_ids=[NUMBER], **FAST) as sandbox:
        bsuid = ids.bsuid(sandbox.settings.waba_id, "16505550077")
        wamid = await sandbox.control.inbound_text("16505550077", "no number shown", NUMBER, hide_number=True)

        async def arrived() -> list[InboundMessage]:
            return await ingest.inbound({wamid})

        [message] = await eventually(arrived, timeout=60)
        assert (message.from_, message.user_id, message.text) == (None, bsuid, "no number shown")
        [record] = [r for r in await read_topic(ingest.settings, ingest.topics.inbound_messages)
                    if wamid.encode() in r.value]
        assert record.key == bsuid.encode()

        body = {"messaging_product": "whatsapp", "recipient": bsuid, "type": "text", "text": {"body": "hi"}}
        async with httpx.AsyncClient() as http:
            answer = await http.post(sandbox.messages_url(NUMBER), json=body,
                                     headers={"Authorization": f"Bearer {sandbox.access_token}"})
        assert answer.status_code == 200
        assert answer.json()["contacts"] == [{"input": bsuid, "user_id": bsuid}]
        sent = answer.json()["messages"][0]["id"]
        events = await ingest.wait_events({sent}, count=3, timeout=60)
        assert {e.status.value for _, e in events} == {"sent", "delivered", "read"}
        assert {(e.recipient_id, e.recipient_user_id) for _, e in events} == {("16505550077", bsuid)}
