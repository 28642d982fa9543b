"""Taking a record back from aiokafka's producer before it is sent (pipeline.produce_guard).

These tests also pin the aiokafka internals the guard relies on: if an upgrade changes them, they fail.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from pipeline.produce_guard import Withdrawn, leaders_reachable, withdraw
from pipeline.topics import TopicCatalog
from tests.api.conftest import read_topic


async def test_a_lingering_record_is_withdrawn_and_never_written(settings: Settings, topics: TopicCatalog) -> None:
    topic = topics.send_requests
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True, linger_ms=2_000)
    await producer.start()
    try:
        # A topic created a moment ago is not in the producer's metadata until it asks (as a send does).
        await producer.partitions_for(topic)
        assert await leaders_reachable(producer, topic, [0])
        assert not await leaders_reachable(producer, topic, [999])  # no such partition: no leader
        taken_back = await producer.send(topic, b"withdrawn", key=b"k", partition=0)
        neighbour = await producer.send(topic, b"same batch", key=b"k", partition=0)
        assert not taken_back.done()  # lingering: still in the accumulator
        assert withdraw(producer, [taken_back]) == 1
        with pytest.raises(Withdrawn):
            await taken_back
        with pytest.raises(Withdrawn):  # its batch went with it; that is true for it too
            await neighbour
        assert withdraw(producer, [taken_back]) == 0

        kept = await producer.send(topic, b"kept", key=b"k", partition=0)
        await asyncio.wait_for(kept, 30)
        assert withdraw(producer, [kept]) == 0  # sent: nothing to take back
        # The idempotent producer's sequence is intact after a withdrawal: the next record lands too.
        assert (await asyncio.wait_for(await producer.send(topic, b"next", partition=0), 30)).offset >= 0
    finally:
        await producer.stop()
    values = [r.value for r in await read_topic(settings, topic, at_least=2)]
    assert values == [b"kept", b"next"]
