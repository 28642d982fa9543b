"""Every dashboard query, rule and Grafana alert query returns data from a real Prometheus that scraped a
real running pipeline; and the send-error alert goes off when most sends fail.

The pipeline is every stage as its own process (`LocalStack`, as `pipeline run` starts them) on the
session's Kafka broker, talking to the sandbox. Traffic mixes what each panel needs: successes,
undeliverable recipients (failed statuses), duplicate and out-of-order statuses, auth and transient
Graph errors, timeouts, invalid and unauthorized API calls, idempotent replays, a batch, an API without
Kafka (503), junk on send.requests (a dead letter), bad webhook signatures, malformed webhooks,
verification handshakes and inbound messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings, load_settings
from pipeline.local.kafka import free_port
from pipeline.local.prometheus import PrometheusServer, ScrapeTarget
from pipeline.local.stack import LocalStack
from pipeline.store.settings import sqlite_url
from pipeline.topics import TopicCatalog
from tests.deploy.promcheck import collect_expressions, selectors

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

APP_SECRET = "e2e-app-secret"
VERIFY_TOKEN = "e2e-verify-token"
MAIN_NUMBER = "106540352242922"

AUTH_NUMBER = "106540352240001"  # its token "expires": the sender stops this number, not the others
FLAKY_NUMBER = "106540352240002"  # transient errors: retries, then failures and an open circuit
SLOW_NUMBER = "106540352240003"  # answers held past the client timeout (its own circuit opens too)
HEADERS = {"Authorization": "Bearer dev-key"}


def _recipient(n: int, suffix: str = "") -> str:
    """Distinct recipients; the sandbox picks its scenario from the last four digits (docs/sandbox.md)."""
    return f"+1650{n:03d}{suffix or f'{1000 + n % 8000:04d}'}"


def _text(to: str, number: str = MAIN_NUMBER) -> dict[str, Any]:
    return {"phone_number_id": number, "to": to, "message": {"type": "text", "text": {"body": "hello from e2e"}}}


def _stack_settings(settings: Settings, store_dir: Path, **kafka: object) -> Settings:
    """The test's topics and groups, free ports, and timings short enough for a test."""
    return load_settings(
        kafka={"bootstrap_servers": settings.kafka.bootstrap_servers, "topic_prefix": settings.kafka.topic_prefix,
               "partitions": settings.kafka.partitions, **kafka},
        whatsapp={"phone_number_id": MAIN_NUMBER, "app_secret": APP_SECRET, "webhook_token": VERIFY_TOKEN,
                  "timeout_seconds": 1},
        api={"port": free_port(), "publish_timeout_seconds": 1},
        sender={"port": free_port(), "group_id": settings.sender.group_id, "pair_interval_seconds": 0,
                "retry_max_attempts": 2, "retry_base_delay_seconds": 0.05, "retry_max_delay_seconds": 0.2,
                "breaker_failure_threshold": 2},
        ingest={"port": free_port(), "metrics_port": free_port(), "group_id": settings.ingest.group_id},
        notify={"port": free_port(), "demo_receiver_port": free_port(),
                "group_id": f"notify-{settings.kafka.topic_prefix}"},
        store={"port": free_port(), "group_id": f"{settings.kafka.topic_prefix}store",
               "database_url": sqlite_url(store_dir / "store.db")},
        # `…9030` recipients hang past the client's timeout: ambiguous attempts, quickly.
        sandbox={"port": free_port(), "latency_median_seconds": 0.02, "sent_after_seconds": 0.05,
                 "delivered_after_seconds": 0.15, "read_after_seconds": 0.3, "failed_after_seconds": 0.1,
                 "hang_seconds": 3},
        log={"level": "WARNING"},
    )


@dataclass
class Stages:
    pipeline: LocalStack
    no_kafka: LocalStack  # an API whose Kafka never answers: its requests are the `unavailable` outcome

    @property
    def api_url(self) -> str:
        return self.pipeline.urls["api"]

    @property
    def api_no_kafka_url(self) -> str:
        return self.no_kafka.urls["api"]

    @property
    def ingest_url(self) -> str:
        return self.pipeline.urls["ingest"]

    @property
    def sandbox_url(self) -> str:
        return self.pipeline.urls["sandbox"]

    def scrape_targets(self) -> list[ScrapeTarget]:
        return [*(ScrapeTarget(f"delivery-{name}", url.removeprefix("http://"))  # ingest: receiver and consumers
                  for name, url in self.pipeline.urls.items()),
                ScrapeTarget("delivery-api", self.api_no_kafka_url.removeprefix("http://"))]


def _wait_ready(urls: list[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/readyz not 200 in {timeout:.0f} s")
            time.sleep(0.3)


@pytest.fixture
def stages(settings: Settings, topics: TopicCatalog, tmp_path: Path) -> Iterator[Stages]:
    pipeline = LocalStack(_stack_settings(settings, tmp_path), use_sandbox=True, log_dir=tmp_path / "stages")
    no_kafka = LocalStack(_stack_settings(settings, tmp_path, bootstrap_servers=f"127.0.0.1:{free_port()}"),
                          stages=["api"], use_sandbox=False, log_dir=tmp_path / "no-kafka")
    try:
        pipeline.start()
        no_kafka.start()
        _wait_ready([pipeline.urls[name] for name in ("ingest", "sender", "api")])
        yield Stages(pipeline, no_kafka)
    finally:
        no_kafka.stop()
        pipeline.stop()


async def _send(client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]]) -> list[int]:
    responses = await asyncio.gather(*(client.post(f"{url}/v1/messages", json=b, headers=HEADERS) for b in bodies))
    return [r.status_code for r in responses]


def _signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


async def _mixed_traffic(client: httpx.AsyncClient, stages: Stages, settings: Settings) -> None:
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
    stages: Stages, settings: Settings, tmp_path: Path
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
