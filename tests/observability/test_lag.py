"""Consumer lag against the real broker: end offset minus what the group has committed."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker

from pipeline.config import Settings
from pipeline.observability.lag import LagReporter, measure_lag, subscriber_consumers, track_lag
from pipeline.observability.metrics import CONSUMER_LAG, registry
from pipeline.topics import TopicCatalog

KEY = b"106540352242922"  # one key: every record on one partition


def gauge(topic: str, group: str) -> float | None:
    return registry.get_sample_value("delivery_consumer_lag_messages", {"topic": topic, "group": group})


async def produce(settings: Settings, topic: str, count: int) -> int:
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        for i in range(count):
            meta = await producer.send_and_wait(topic, f"m{i}".encode(), key=KEY)
    finally:
        await producer.stop()
    return int(meta.partition)


async def wait_assigned(consumer: AIOKafkaConsumer) -> None:
    async with asyncio.timeout(30):
        while not consumer.assignment():
            await asyncio.sleep(0.05)


async def test_lag_of_a_consumer_follows_its_commits(settings: Settings, topics: TopicCatalog) -> None:
    topic, group = topics.send_requests, settings.sender.group_id
    partition = await produce(settings, topic, 30)
    consumer = AIOKafkaConsumer(
        topic, **settings.kafka.client_kwargs(), group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await wait_assigned(consumer)
        reporter = LagReporter(consumer, group)
        assert await reporter.report() == {topic: 30}  # nothing committed yet: from the position
        assert gauge(topic, group) == 30

        tp = TopicPartition(topic, partition)
        await consumer.commit({tp: 5})
        assert await reporter.report() == {topic: 25}
        batch = await consumer.getmany(tp, max_records=10, timeout_ms=10_000)
        assert [r.offset for r in batch[tp]] == list(range(10))  # a commit does not move the position
        assert await measure_lag(consumer) == {topic: 25}, "fetched is not done: once committed, commits count"
        await consumer.commit({tp: batch[tp][-1].offset + 1})
        assert await reporter.report() == {topic: 20}
        assert gauge(topic, group) == 20

        await produce(settings, topic, 5)
        assert await reporter.report() == {topic: 25}

        consumer.unsubscribe()  # as when a rebalance moves the partitions to another replica
        assert await reporter.report() == {}
        assert gauge(topic, group) is None, "partitions gone from this process: so is the series"
    finally:
        await consumer.stop()


async def test_track_lag_reports_a_faststream_subscriber_until_cancelled(
    settings: Settings, topics: TopicCatalog
) -> None:
    topic, group = topics.status_updates, settings.ingest.group_id
    partition = await produce(settings, topic, 10)
    # The group already processed 3 records in an earlier life.
    earlier = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await earlier.start()
    try:
        tp = TopicPartition(topic, partition)
        earlier.assign([tp])
        await earlier.commit({tp: 3})
    finally:
        await earlier.stop()

    broker = KafkaBroker(settings.kafka.bootstrap_servers)
    release = asyncio.Event()

    @broker.subscriber(topic, group_id=group, ack_policy=AckPolicy.ACK, auto_offset_reset="earliest")
    async def stuck(body: bytes) -> None:
        await release.wait()  # a handler that cannot make progress: the lag must show it

    subscriber = broker.subscribers[0]
    assert subscriber_consumers(subscriber)() == []  # before start there is no consumer yet
    await broker.start()
    tracker = asyncio.create_task(track_lag(subscriber_consumers(subscriber), group, interval=0.1))
    try:
        async with asyncio.timeout(30):
            while gauge(topic, group) != 7:
                await asyncio.sleep(0.05)
    finally:
        tracker.cancel()
        await asyncio.gather(tracker, return_exceptions=True)
        release.set()
        await broker.stop()
    assert gauge(topic, group) is None, "a stopped tracker leaves no stale series"
    assert CONSUMER_LAG._labelnames == ("topic", "group")
