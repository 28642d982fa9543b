"""Kafka unreachable → 503 (Meta retries later); once it is back, the retry is stored: nothing lost.

Uses a broker of its own (the session broker is shared), stopped and started under the receiver.
"""

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
from pipeline.observability.metrics import WEBHOOKS
from pipeline.topics import create_topics
from tests.ingest.conftest import eventually, ingest_settings, new_wamid, read_topic, signed, status, value, webhook

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    broker = LocalKafka(data_dir=tmp_path / "kafka", port=free_port())
    try:
        yield broker
    finally:
        broker.stop()


async def test_503_while_kafka_is_down_and_200_once_it_is_back(own_broker: LocalKafka) -> None:
    settings = ingest_settings(own_broker.bootstrap_servers, components="receiver", produce_timeout_seconds=1.5)
    bodies = [webhook(value([status(new_wamid(), "sent")])) for _ in range(4)]
    answered: dict[bytes, int] = {}
    answers: list[int] = []

    async def post(http: httpx.AsyncClient, body: bytes) -> int:
        answered[body] = (await http.post("/webhooks/whatsapp", content=body, headers=signed(body))).status_code
        answers.append(answered[body])
        return answered[body]

    unavailable_before = WEBHOOKS.labels(outcome="unavailable")._value.get()
    # Started before the broker exists: it listens anyway and says 503.
    async with Ingest(settings, setup(Stage.INGEST, settings)) as receiver, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{receiver.port}", timeout=30
    ) as http:
        assert await post(http, bodies[0]) == 503
        assert (await http.get("/readyz")).status_code == 503

        await asyncio.to_thread(_start, own_broker)
        await create_topics(settings.kafka)
        await eventually(lambda: _is(post(http, bodies[0]), 200), timeout=30, interval=0.5)  # Meta's retry
        assert (await http.get("/readyz")).status_code == 200
        assert await post(http, bodies[1]) == 200

        await asyncio.to_thread(own_broker.stop)
        started = time.monotonic()
        first, second = await asyncio.gather(post(http, bodies[2]), post(http, bodies[3]))
        assert (first, second) == (503, 503)
        assert time.monotonic() - started < 10  # bounded by produce_timeout_seconds, not aiokafka's 40 s
        assert (await http.get("/readyz")).status_code == 503

        await asyncio.to_thread(_start, own_broker)
        for body in bodies[2:]:
            await eventually(lambda b=body: _is(post(http, b), 200), timeout=30, interval=0.5)

    # 503s are counted (an operator sees Meta being asked to retry), once per answer
    assert WEBHOOKS.labels(outcome="unavailable")._value.get() - unavailable_before == \
        sum(1 for code in answers if code == 503)
    stored = {r.value for r in await read_topic(settings, f"{settings.kafka.topic_prefix}webhooks.raw")}
    assert set(bodies) <= stored, "every webhook answered 200 (after Meta's retries) is in Kafka"


def _start(broker: LocalKafka) -> None:
    broker.start()
    broker.wait_ready(timeout=90)


async def _is(answer: object, expected: int) -> bool:
    return await answer == expected  # type: ignore[misc]
