"""Taking a record back from aiokafka's producer before it is sent (pipeline.produce_guard).

These tests also pin the aiokafka internals the guard relies on: if an upgrade changes them, they fail.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import LeaderNotAvailableError, OutOfOrderSequenceNumber
from aiokafka.structs import TopicPartition

from pipeline.config import Settings
from pipeline.produce_guard import Withdrawn, leaders_reachable, request_timeout_ms, withdraw
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


@pytest.mark.parametrize("guarded", [False, True], ids=["aiokafka-expires-the-batch", "withdrawn-first"])
async def test_a_batch_that_waits_for_a_leader_is_withdrawn_before_aiokafka_expires_it(
    settings: Settings, topics: TopicCatalog, monkeypatch: pytest.MonkeyPatch, guarded: bool
) -> None:
    """Why guarded producers take `request_timeout_ms(deadline)`: an expired batch breaks the partition.

    aiokafka expires a batch whose leader stays unknown past `request_timeout_ms` after giving it a
    sequence number, so every later batch of that partition fails `OutOfOrderSequenceNumber`. With the
    guard's TTL the batch is withdrawn at the deadline (no sequence taken) and the next one lands.
    """
    deadline = 1.5
    timeout_ms = request_timeout_ms(deadline) if guarded else 500  # unguarded: its TTL ends first
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True,
                                request_timeout_ms=timeout_ms)
    await producer.start()
    try:
        topic = topics.send_requests
        # The broker knows the producer's sequence once it wrote a batch (before that any sequence goes).
        await asyncio.wait_for(await producer.send(topic, b"before", partition=0), 30)
        cluster = producer.client.cluster
        known = cluster.leader_for_partition
        monkeypatch.setattr(cluster, "leader_for_partition",
                            lambda tp: -1 if tp == TopicPartition(topic, 0) else known(tp))  # a broker restarting
        waiting = await producer.send(topic, b"during", partition=0)
        done, _ = await asyncio.wait([waiting], timeout=deadline)
        if not done:
            withdraw(producer, [waiting])
        monkeypatch.setattr(cluster, "leader_for_partition", known)  # the broker is back
        after = await producer.send(topic, b"after", partition=0)
        if guarded:
            with pytest.raises(Withdrawn):
                await waiting
            assert (await asyncio.wait_for(after, 30)).offset >= 0
        else:
            with pytest.raises(LeaderNotAvailableError):
                await waiting
            with pytest.raises(OutOfOrderSequenceNumber):
                await asyncio.wait_for(after, 30)
    finally:
        await producer.stop()
