"""API → sender → sandbox → signed webhooks → ingest: one request, followed to `read`."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from pipeline.contracts import MessageOutcome, SendRequest, SendResult, StatusEvent, new_request_id
from pipeline.local.stack import LocalStack
from pipeline.topics import TopicCatalog

pytestmark = pytest.mark.kafka


async def collect(stack: LocalStack, topic: str, until: callable, timeout: float = 60.0) -> list[bytes]:  # type: ignore[valid-type]
    consumer = AIOKafkaConsumer(
        topic, **stack.settings.kafka.client_kwargs(), auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while not until(seen):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    seen.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return seen


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_a_request_is_sent_delivered_and_read(stack: LocalStack) -> None:
    topics = TopicCatalog(stack.settings.kafka)
    delivered_before = metric(stack.urls["ingest"], "delivery_status_events_total", status="delivered")
    timed_before = metric(stack.urls["ingest"], "delivery_transition_seconds_count", transition="accepted_to_delivered")
    async with httpx.AsyncClient(base_url=stack.urls["api"], timeout=30) as api:
        response = await api.post(
            "/v1/messages",
            headers={"Authorization": "Bearer dev-key"},
            json={"to": "+16505551234", "message": {"type": "text", "text": {"body": "Your order shipped"}}},
        )
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]

    def done(values: list[bytes]) -> bool:
        return any(SendResult.model_validate_json(v).request_id == request_id for v in values)

    results = [SendResult.model_validate_json(v) for v in await collect(stack, topics.send_results, done)]
    [result] = [r for r in results if r.request_id == request_id]
    assert result.outcome is MessageOutcome.SENT
    assert result.wamid

    def read(values: list[bytes]) -> bool:
        events = [StatusEvent.model_validate_json(v) for v in values]
        return {e.status.value for e in events if e.request_id == request_id} >= {"sent", "delivered", "read"}

    events = [StatusEvent.model_validate_json(v) for v in await collect(stack, topics.status_events, read)]
    mine = [e for e in events if e.request_id == request_id]
    assert [e.status.value for e in mine] == ["sent", "delivered", "read"]
    assert all(e.wamid == result.wamid for e in mine)
    # The request's trace travelled through Meta and came back with every status.
    assert all(e.traceparent and e.traceparent.split("-")[1] == result.traceparent.split("-")[1] for e in mine)  # type: ignore[union-attr]
    # So did the accepted time, to the millisecond: the ingest times accepted → sent/delivered.
    assert result.accepted_at is not None
    assert all(e.accepted_at and abs(e.accepted_at - result.accepted_at).total_seconds() <= 0.0005 for e in mine)

    assert metric(stack.urls["ingest"], "delivery_transition_seconds_count",
                  transition="accepted_to_delivered") > timed_before

    assert metric(stack.urls["ingest"], "delivery_status_events_total", status="delivered") > delivered_before
    assert metric(stack.urls["sender"], "delivery_messages_total", outcome="sent") >= 1


async def test_a_request_published_with_kcat_is_sent_like_an_api_request(stack: LocalStack) -> None:
    """Producers in other languages write JSON to the topic; no key, no phone_number_id, no request id."""
    assert shutil.which("kcat"), "kcat is missing: `make setup` installs it (Debian's kcat)"
    topics = TopicCatalog(stack.settings.kafka)
    request_id = new_request_id()
    body = {"request_id": request_id, "to": "+16505550000", "message": {"type": "text", "text": {"body": "via kcat"}}}
    SendRequest.model_validate(body)  # what the docs promise is a valid request
    subprocess.run(
        ["kcat", "-P", "-b", stack.settings.kafka.bootstrap_servers, "-t", topics.send_requests,
         "-H", "content-type=application/json"],
        input=json.dumps(body).encode(), check=True, timeout=30,
    )

    def done(values: list[bytes]) -> bool:
        return any(SendResult.model_validate_json(v).request_id == request_id for v in values)

    results = [SendResult.model_validate_json(v) for v in await collect(stack, topics.send_results, done)]
    [result] = [r for r in results if r.request_id == request_id]
    assert result.outcome is MessageOutcome.SENT
    assert result.phone_number_id == stack.settings.whatsapp.phone_number_id


async def test_a_request_addressed_by_bsuid_goes_to_meta_as_recipient_and_its_statuses_come_back(
    stack: LocalStack,
) -> None:
    # Meta's "Business-scoped user IDs" page: a send names a BSUID in `recipient` (not `to`), and the
    # statuses of that message name the user in `recipient_user_id`.
    from pipeline.sandbox import ids

    topics = TopicCatalog(stack.settings.kafka)
    bsuid = ids.bsuid(stack.settings.sandbox.waba_id, "16505550142")
    async with httpx.AsyncClient(base_url=stack.urls["api"], timeout=30) as api:
        response = await api.post(
            "/v1/messages",
            headers={"Authorization": "Bearer dev-key"},
            json={"recipient_user_id": bsuid, "message": {"type": "text", "text": {"body": "Hi, by BSUID"}}},
        )
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]

    def done(values: list[bytes]) -> bool:
        return any(SendResult.model_validate_json(v).request_id == request_id for v in values)

    results = [SendResult.model_validate_json(v) for v in await collect(stack, topics.send_results, done)]
    [result] = [r for r in results if r.request_id == request_id]
    assert (result.outcome, result.recipient_user_id, result.to) == (MessageOutcome.SENT, bsuid, None)

    async with httpx.AsyncClient(base_url=stack.urls["sandbox"], timeout=30) as sandbox:
        sends = (await sandbox.get("/_sandbox/sends")).json()["sends"]
    [send] = [s for s in sends if str(s["request_id"]).partition("|")[0] == request_id]
    assert send["recipient"] == bsuid  # the body named the user in Meta's `recipient` field
    assert send["wamid"] == result.wamid

    def read(values: list[bytes]) -> bool:
        events = [StatusEvent.model_validate_json(v) for v in values]
        return {e.status.value for e in events if e.request_id == request_id} >= {"sent", "delivered", "read"}

    events = [StatusEvent.model_validate_json(v) for v in await collect(stack, topics.status_events, read)]
    mine = [e for e in events if e.request_id == request_id]
    assert [e.status.value for e in mine] == ["sent", "delivered", "read"]
    assert {e.recipient_user_id for e in mine} == {bsuid}
