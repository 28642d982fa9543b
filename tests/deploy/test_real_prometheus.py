"""Every dashboard query, rule and Grafana alert query returns data from a real Prometheus that scraped a
real running pipeline; and the send-error alert goes off when most sends fail.

The pipeline is every stage as its own process (tests/deploy/stages.py) on the session's Kafka broker,
talking to the sandbox. Traffic mixes what each panel needs: successes, undeliverable recipients (failed
statuses), duplicate and out-of-order statuses, auth and transient Graph errors, timeouts, invalid and
unauthorized API calls, idempotent replays, a batch, an API without Kafka (503), junk on send.requests
(a dead letter), bad webhook signatures, malformed webhooks, verification handshakes and inbound messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from pipeline.local.prometheus import PrometheusServer, prometheus_binary
from pipeline.topics import TopicCatalog
from tests.deploy.promcheck import collect_expressions, selectors
from tests.deploy.stages import APP_SECRET, MAIN_NUMBER, VERIFY_TOKEN, LocalStages, missing_stages

MISSING = missing_stages()
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"stages not yet available: {', '.join(MISSING)}"),
    pytest.mark.skipif(prometheus_binary() is None, reason="prometheus missing (Debian package `prometheus`)"),
]

AUTH_NUMBER = "106540352240001"  # its token "expires": the sender stops this number, not the others
FLAKY_NUMBER = "106540352240002"  # transient errors: retries, then failures and an open circuit
SLOW_NUMBER = "106540352240003"  # answers held past the client timeout (its own circuit opens too)
HEADERS = {"Authorization": "Bearer dev-key"}


def _recipient(n: int, suffix: str = "") -> str:
    """Distinct recipients; the sandbox picks its scenario from the last four digits (docs/sandbox.md)."""
    return f"+1650{n:03d}{suffix or f'{1000 + n % 8000:04d}'}"


def _text(to: str, number: str = MAIN_NUMBER) -> dict[str, Any]:
    return {"phone_number_id": number, "to": to, "message": {"type": "text", "text": {"body": "hello from e2e"}}}


@pytest.fixture
def stages(settings: Settings, topics: TopicCatalog, tmp_path: Path) -> Iterator[LocalStages]:
    with LocalStages(settings, tmp_path / "stages") as running:
        yield running


async def _send(client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]]) -> list[int]:
    responses = await asyncio.gather(*(client.post(f"{url}/v1/messages", json=b, headers=HEADERS) for b in bodies))
    return [r.status_code for r in responses]


def _signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


async def _mixed_traffic(client: httpx.AsyncClient, stages: LocalStages, settings: Settings) -> None:
    api = stages.api_url
    statuses = await _send(client, api, [_text(_recipient(n, "9999")) for n in range(10)])  # failed statuses
    statuses += await _send(client, api, [_text(_recipient(n, "9201")) for n in range(5)])  # duplicates
    statuses += await _send(client, api, [_text(_recipient(n, "9202")) for n in range(3)])  # read first
    statuses += await _send(client, api, [_text(_recipient(n, "9190"), AUTH_NUMBER) for n in range(3)])
    statuses += await _send(client, api, [_text(_recipient(n, "9000"), FLAKY_NUMBER) for n in range(6)])
    statuses += await _send(client, api, [_text(_recipient(n, "9030"), SLOW_NUMBER) for n in range(2)])  # timeouts
    assert set(statuses) == {202}, statuses
    batch = {"messages": [_text(_recipient(100 + n)) for n in range(5)]}
    assert (await client.post(f"{api}/v1/messages:batch", json=batch, headers=HEADERS)).status_code == 202
    # API outcomes: invalid, unauthorized, an idempotent replay, and 503 from the API without Kafka.
    assert (await client.post(f"{api}/v1/messages", json={"to": "+1"}, headers=HEADERS)).status_code in (400, 422)
    bad_key = {"Authorization": "Bearer wrong-key-123"}
    assert (await client.post(f"{api}/v1/messages", json=_text(_recipient(1)), headers=bad_key)).status_code == 401
    replay = {**HEADERS, "Idempotency-Key": f"e2e-{uuid.uuid4().hex}"}
    for _ in range(2):
        assert (await client.post(f"{api}/v1/messages", json=_text(_recipient(2)), headers=replay)).status_code == 202
    no_kafka = await client.post(f"{stages.api_no_kafka_url}/v1/messages", json=_text(_recipient(3)), headers=HEADERS)
    assert no_kafka.status_code == 503
    # Junk straight onto send.requests: the sender dead-letters it.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(TopicCatalog(settings.kafka).send_requests, b"{not json", key=MAIN_NUMBER.encode())
    finally:
        await producer.stop()
    # Webhooks: bad signature, malformed but signed, verification handshakes; an inbound user message.
    hook = f"{stages.ingest_url}/webhooks/whatsapp"
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    assert (await client.post(hook, content=body, headers=_signed(body, "not-the-secret"))).status_code in (401, 403)
    junk = b'{"object": "whatsapp_business_account", "entry": "not a list"}'
    await client.post(hook, content=junk, headers=_signed(junk))
    verify = {"hub.mode": "subscribe", "hub.challenge": "12345"}
    assert (await client.get(hook, params={**verify, "hub.verify_token": VERIFY_TOKEN})).text == "12345"
    assert (await client.get(hook, params={**verify, "hub.verify_token": "wrong"})).status_code == 403
    user = {"from": "16505550123", "text": "hi", "phone_number_id": MAIN_NUMBER}
    inbound = await client.post(f"{stages.sandbox_url}/_sandbox/inbound", json=user)
    assert inbound.status_code == 200, inbound.text


async def _wait_for(check: Any, timeout: float = 60.0) -> Any:
    """Poll the blocking `check` (off the event loop) until it returns something truthy or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(1)


def _empty(server: PrometheusServer, queries: dict[str, list[str]]) -> dict[str, list[str]]:
    return {q: where for q, where in queries.items() if not server.query(q)}


async def test_every_expression_returns_data_and_the_send_alert_fires(
    stages: LocalStages, settings: Settings, tmp_path: Path
) -> None:
    server = PrometheusServer(tmp_path / "prometheus", stages.scrape_targets(), scrape_interval="1s")
    server.start()
    try:
        await asyncio.to_thread(server.wait_ready)
        await asyncio.to_thread(server.wait_targets_up, 60)
        async with httpx.AsyncClient(timeout=30) as client:
            # Healthy traffic first: sends succeed and the send-error alert stays quiet.
            assert set(await _send(client, stages.api_url, [_text(_recipient(n)) for n in range(30)])) == {202}
            sent = await _wait_for(lambda: server.query(
                'sum(delivery_messages_total{outcome="sent"}) >= 30'))
            assert sent, "30 healthy sends never showed as sent"
            assert server.alerts_named("DeliverySendErrorBudgetBurn") == []

            await _mixed_traffic(client, stages, settings)
            # Most sends now fail (invalid parameter, code 100: terminal, our payload is wrong).
            failing = [_text(_recipient(200 + n, "9100")) for n in range(60)]
            assert set(await _send(client, stages.api_url, failing)) == {202}

        def send_alert() -> list[dict[str, Any]]:
            return [a for a in server.alerts_named("DeliverySendErrorBudgetBurn")
                    if a["labels"]["severity"] == "page" and a["state"] in ("pending", "firing")]

        alert = await _wait_for(send_alert, timeout=90)
        ratio = server.query("delivery:send_error_ratio:rate5m")
        assert alert, f"DeliverySendErrorBudgetBurn never went pending; 5m send error ratio: {ratio}"

        expressions = collect_expressions()
        probes: dict[str, list[str]] = {}
        for e in expressions:
            probes.setdefault(e.probe, []).append(e.source)
        metric_selectors = selectors(expressions)
        empty = await _wait_for(lambda: not _empty(server, probes | metric_selectors), timeout=60)
        missing = {} if empty else _empty(server, probes | metric_selectors)
        print(f"checked {len(expressions)} expressions ({len(probes)} distinct) and {len(metric_selectors)} "
              f"selectors against a real Prometheus; {len(missing)} returned no series")
        assert not missing, "no series for:\n" + "\n".join(f"{q}\n    used by {w}" for q, w in missing.items())
    finally:
        server.stop()
