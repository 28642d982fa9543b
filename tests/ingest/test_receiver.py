"""The webhook endpoint over real HTTP and the real broker: verification, signatures, size, durability."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tests.ingest.conftest import (
    VERIFY_TOKEN,
    Running,
    end_offsets,
    header,
    new_wamid,
    read_topic,
    signed,
    status,
    value,
    webhook,
)

pytestmark = pytest.mark.kafka


async def test_verification_echoes_the_challenge_for_our_token(ingest: Running) -> None:
    before = await ingest.metric("delivery_webhooks_total", outcome="verified")
    response = await ingest.http.get(
        "/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                      "hub.challenge": "1158201444"},
    )
    assert (response.status_code, response.text) == (200, "1158201444")
    assert await ingest.metric("delivery_webhooks_total", outcome="verified") == before + 1


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
    ],
)
async def test_verification_refuses_anything_else_with_403(ingest: Running, params: dict[str, str]) -> None:
    before = await ingest.metric("delivery_webhooks_total", outcome="verify_failed")
    response = await ingest.http.get("/webhooks/whatsapp", params=params)
    assert response.status_code == 403
    assert "1" not in response.text
    assert await ingest.metric("delivery_webhooks_total", outcome="verify_failed") == before + 1


async def test_each_fixture_is_stored_byte_for_byte_before_the_200(ingest: Running, fixtures_dir: Path) -> None:
    start = await end_offsets(ingest.settings, ingest.topics.webhooks_raw)
    bodies = [path.read_bytes() for path in sorted(fixtures_dir.glob("*.json"))]
    before = await ingest.metric("delivery_webhooks_total", outcome="accepted")
    for body in bodies:
        response = await ingest.post(body)
        assert response.status_code == 200
    # Acknowledged means already in Kafka: no waiting needed.
    stored = await read_topic(ingest.settings, ingest.topics.webhooks_raw, start)
    assert sorted(r.value for r in stored) == sorted(bodies)
    for record in stored:
        assert header(record, "x-hub-signature-256") == signed(record.value)["X-Hub-Signature-256"]
        assert datetime.fromisoformat(header(record, "received-at") or "").tzinfo is not None
        assert (header(record, "traceparent") or "").startswith("00-")
        assert record.key is None  # spread evenly: Meta promises no order across webhooks anyway
    assert await ingest.metric("delivery_webhooks_total", outcome="accepted") == before + len(bodies)


async def test_bad_or_missing_signature_is_401_and_nothing_reaches_any_topic(ingest: Running) -> None:
    topics = ingest.topics
    names = [topics.webhooks_raw, topics.status_updates, topics.status_events, topics.status_state,
             topics.inbound_messages, topics.dead_letters]
    starts = {name: await end_offsets(ingest.settings, name) for name in names}
    before = await ingest.metric("delivery_webhooks_total", outcome="bad_signature")
    rejected = new_wamid()
    body = webhook(value([status(rejected, "delivered")]))
    for headers in (
        {"Content-Type": "application/json"},                                  # missing
        signed(body, secret="not-the-app-secret"),                            # wrong secret
        signed(body + b" "),                                                  # another body's signature
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},                       # garbage
    ):
        response = await ingest.post(body, headers=headers)
        assert response.status_code == 401
    assert await ingest.metric("delivery_webhooks_total", outcome="bad_signature") == before + 4

    # A good webhook afterwards is a marker: once it is through every stage, the rejected one would be too.
    marker = new_wamid()
    assert (await ingest.post(webhook(value([status(marker, "delivered")])))).status_code == 200
    await ingest.wait_events({marker}, count=2)  # delivered and the sent it implies
    for name in names:
        records = await read_topic(ingest.settings, name, starts[name])
        for record in records:
            blob = (record.key or b"") + (record.value or b"")
            assert rejected.encode() not in blob, f"{name} holds the rejected webhook's status"
            if name == topics.webhooks_raw:
                # Written before each 200 (earlier tests' too), so only this test's marker is new here.
                # Downstream topics may still carry earlier tests' statuses: the module shares one ingest.
                assert marker.encode() in blob, f"{name} holds a webhook that is not the marker"
        if name in (topics.webhooks_raw, topics.status_events):
            assert any(marker.encode() in (r.value or b"") for r in records), f"the marker is not on {name}"


async def test_a_body_over_the_limit_is_413_and_not_stored(ingest: Running) -> None:
    start = await end_offsets(ingest.settings, ingest.topics.webhooks_raw)
    big = b" " * (ingest.settings.ingest.max_body_bytes + 1)
    response = await ingest.post(big)
    assert response.status_code == 413

    async def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(4):
            yield b" " * (ingest.settings.ingest.max_body_bytes // 3)

    response = await ingest.http.post("/webhooks/whatsapp", content=chunks(), headers={"X-Hub-Signature-256": "x"})
    assert response.status_code == 413
    assert await read_topic(ingest.settings, ingest.topics.webhooks_raw, start) == []


async def test_ops_routes_share_the_port(ingest: Running) -> None:
    assert (await ingest.http.get("/healthz")).status_code == 200
    ready = await ingest.http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    metrics = (await ingest.http.get("/metrics")).text
    assert "delivery_webhooks_total" in metrics
    assert "delivery_consumer_lag_messages" in metrics or "delivery_status_events_total" in metrics
