"""Requests addressed by BSUID, from `send.requests` through the sender to the sandbox as Meta.

Meta's send call names a business-scoped user id in `recipient` instead of `to` ("Business-scoped user
IDs", developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids;
dualhook.com/docs/contacts-bsuid-api-changes summarises it). The sandbox refuses a BSUID in `to`, so an
accepted send logged with its `recipient` is one that arrived in Meta's shape. A record naming two
recipients, or none, is dead-lettered with the field and the rule, and the records behind it are sent.
"""

from __future__ import annotations

import random
from collections import defaultdict

import orjson
import pytest

from pipeline.config import Settings
from pipeline.contracts import SendRequest
from pipeline.observability.redaction import bsuid_ref
from pipeline.sandbox import ids
from pipeline.sandbox.testing import running_sandbox
from pipeline.topics import TopicCatalog
from tests.sender.kafka_helpers import (
    NUMBER,
    Outcomes,
    callback_request_id,
    produce,
    running_sender,
    text_request,
    with_sender,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def bsuid_request(bsuid: str, request_id: str) -> SendRequest:
    return SendRequest(request_id=request_id, phone_number_id=NUMBER, recipient_user_id=bsuid,
                       message={"type": "text", "text": {"body": request_id}})  # type: ignore[arg-type]


async def test_bsuid_requests_reach_the_sandbox_in_metas_shape_in_order_and_their_results_name_the_bsuid(
    settings: Settings, topics: TopicCatalog, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(21)
    bsuids = [ids.bsuid("102290129340398", f"1650555{5000 + i:04d}") for i in range(8)]
    phones = [f"+1650555{6000 + i:04d}" for i in range(4)]
    requests, expected = [], defaultdict(list)
    for n in range(160):
        recipient = rng.choice(bsuids + phones)
        request = (bsuid_request(recipient, f"bs-{n:04d}") if recipient in bsuids
                   else text_request(recipient, f"ph-{n:04d}"))
        requests.append(request)
        expected[recipient].append(request.request_id)
    # Written straight to the topic by another producer: one names two recipients, one none.
    both = orjson.dumps({"request_id": "bad-both", "phone_number_id": NUMBER, "to": phones[0],
                         "recipient_user_id": bsuids[0], "message": {"type": "text", "text": {"body": "x"}}})
    neither = orjson.dumps({"request_id": "bad-none", "phone_number_id": NUMBER,
                            "message": {"type": "text", "text": {"body": "x"}}})
    # Spread latencies: answers come back out of order, so only the per-recipient key keeps the order.
    async with running_sandbox(rate_per_second=0, latency_median_seconds=0.02, latency_sigma=1.0) as sandbox, \
            Outcomes(settings) as outcomes:
        await produce(settings, [*requests[:80], both, neither, *requests[80:]])
        async with running_sender(with_sender(settings, sandbox.base_url, rate_per_second=1000, max_in_flight=40)):
            await outcomes.wait_for(len(requests) + 2, timeout=60)
        sends = await sandbox.control.sends()

    by_id = {r.request_id: r for r in requests}
    got = defaultdict(list)
    for send in sends:
        request = by_id[callback_request_id(send)]
        got[request.recipient_key].append(request.request_id)
        if request.recipient_user_id is not None:
            assert send["recipient"] == request.recipient_user_id  # Meta's field, not `to`
        else:
            assert send["recipient"] is None
            assert send["to"] == request.to.removeprefix("+")  # type: ignore[union-attr]
    assert got == expected
    errors = {d["request_id"]: d["error"] for d in outcomes.dead_letters}
    assert set(errors) == {"bad-both", "bad-none"}
    assert errors["bad-both"].startswith("to: recipient_ambiguous")
    assert errors["bad-none"].startswith("to: missing")
    assert all(d["reason"] == "schema_invalid" for d in outcomes.dead_letters)
    assert {r["outcome"] for r in outcomes.results} == {"sent"}
    assert set(outcomes.per_request().values()) == {1}
    for result in outcomes.results:
        request = by_id[result["request_id"]]
        assert result.get("recipient_user_id") == request.recipient_user_id
        assert result.get("to") == request.to

    # The sender's log lines name BSUID recipients by reference, never as themselves.
    logged = capsys.readouterr().out
    assert not any(bsuid in logged for bsuid in bsuids)
    assert any(bsuid_ref(bsuid) in logged for bsuid in bsuids), "no log line names a BSUID recipient"
