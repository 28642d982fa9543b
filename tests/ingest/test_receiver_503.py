"""A webhook answered 503 is not written (issue 13, finding 6, the receiver's half), and the answer
comes within `produce_timeout_seconds`: Meta retries a 503, so a 503 that was written after all is
a duplicate at best and, before this, kept webhooks waiting 15 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.contracts import Stage
from pipeline.ingest import Ingest
from pipeline.local.kafka import LocalKafka, free_port
from pipeline.observability import setup
from pipeline.topics import create_topics
from tests.ingest.conftest import ingest_settings, new_wamid, read_topic, signed, status, value, webhook

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    broker = LocalKafka(data_dir=tmp_path / "kafka", port=free_port())
    broker.start()
    try:
        broker.wait_ready(timeout=90)
        yield broker
    finally:
        broker.stop()


async def test_a_webhook_answered_503_never_reaches_the_topic(own_broker: LocalKafka) -> None:
    timeout = 1.5
    settings = ingest_settings(own_broker.bootstrap_servers, components="receiver", produce_timeout_seconds=timeout)
    await create_topics(settings.kafka)
    answers: dict[bytes, int] = {}

    async def post(http: httpx.AsyncClient, body: bytes) -> int:
        started = time.monotonic()
        answers[body] = (await http.post("/webhooks/whatsapp", content=body, headers=signed(body))).status_code
        assert time.monotonic() - started < timeout + 3, "answered within produce_timeout_seconds"
        return answers[body]

    async with Ingest(settings, setup(Stage.INGEST, settings)) as receiver, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{receiver.port}", timeout=30
    ) as http:
        async with asyncio.timeout(60):
            while await post(http, webhook(value([status(new_wamid(), "sent")]))) != 200:
                await asyncio.sleep(0.5)
        await asyncio.to_thread(own_broker.stop)
        for _ in range(8):  # one at a time: each is the receiver's probe of Kafka, so each reaches the producer
            assert await post(http, webhook(value([status(new_wamid(), "delivered")]))) == 503
        await asyncio.to_thread(own_broker.start)
        await asyncio.to_thread(own_broker.wait_ready, 90)
        async with asyncio.timeout(90):
            while await post(http, webhook(value([status(new_wamid(), "read")]))) != 200:
                await asyncio.sleep(0.5)
        await asyncio.sleep(5)  # whatever the producer still held would land by now

    stored = {r.value for r in await read_topic(settings, f"{settings.kafka.topic_prefix}webhooks.raw")}
    assert {body for body, code in answers.items() if code == 200} <= stored
    answered_503 = {body for body, code in answers.items() if code == 503}
    assert len(answered_503) >= 8
    assert not answered_503 & stored, "a webhook answered 503 was written"
