"""The sender's readiness needs the broker (issue 13, finding 6): /readyz is not 200 with no broker."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from pipeline.config import Settings
from pipeline.sender.health import BrokerCheck


class GoneBroker:
    def __init__(self) -> None:
        self.calls = 0

    async def fetch_all_metadata(self) -> Any:
        self.calls += 1
        raise KafkaConnectionError("Unable to get cluster metadata over all known brokers")


class HangingBroker:
    async def fetch_all_metadata(self) -> Any:
        import asyncio

        await asyncio.sleep(60)


async def test_a_broker_that_does_not_answer_is_not_ready_and_the_answer_is_cached() -> None:
    gone = GoneBroker()
    check = BrokerCheck(gone, cache_seconds=60)
    assert await check.reachable() is False
    assert await check.reachable() is False
    assert gone.calls == 1  # /readyz polled often costs one metadata request per cache period
    assert await BrokerCheck(HangingBroker(), timeout=0.2).reachable() is False


@pytest.mark.kafka
async def test_the_real_broker_is_reachable(settings: Settings) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        assert await BrokerCheck(producer.client).reachable() is True
    finally:
        await producer.stop()
