"""The real broker started by the project answers produce, group consume, commit and admin calls."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource
from aiokafka.errors import InvalidReplicationFactorError
from aiokafka.structs import OffsetAndMetadata

from pipeline.config import Settings
from pipeline.local.kafka import LocalKafka, fetch_jars, free_port
from pipeline.topics import CATALOG, TopicCatalog, create_topics


async def test_produce_consume_commit_through_real_broker(settings: Settings, topics: TopicCatalog) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True)
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(topics.send_requests, f"m{i}".encode(), key=b"106540352242922")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topics.send_requests,
        **settings.kafka.client_kwargs(),
        group_id=settings.sender.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        received = []
        async with asyncio.timeout(30):
            async for record in consumer:
                received.append(record)
                if len(received) == 20:
                    break
        # One key → one partition → producer order is kept.
        assert [r.value for r in received] == [f"m{i}".encode() for i in range(20)]
        last = received[-1]
        tp = TopicPartition(last.topic, last.partition)
        await consumer.commit({tp: OffsetAndMetadata(last.offset + 1, "done:")})
        assert await consumer.committed(tp) == last.offset + 1
    finally:
        await consumer.stop()


async def test_create_topics_is_idempotent_and_applies_the_catalog(settings: Settings) -> None:
    first = await create_topics(settings.kafka)
    second = await create_topics(settings.kafka)
    catalog = TopicCatalog(settings.kafka)
    assert sorted(first) == sorted(catalog.name(spec.name) for spec in CATALOG)
    assert second == []

    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics([catalog.send_requests])
        assert len(described[0]["partitions"]) == settings.kafka.partitions
        configs = await admin.describe_configs([ConfigResource("TOPIC", catalog.status_state)])
        entries = {c[0]: c[1] for c in configs[0].resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
    finally:
        await admin.close()


async def test_create_topics_counts_a_topic_the_broker_already_has_as_not_created(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KRaft: a creation the controller committed may not be in this broker's metadata yet, so the
    # list misses it and the create is answered "already exists". That topic was not created by us.
    await create_topics(settings.kafka)

    async def stale_list(self: AIOKafkaAdminClient) -> list[str]:
        return []

    monkeypatch.setattr(AIOKafkaAdminClient, "list_topics", stale_list)
    assert await create_topics(settings.kafka) == []


async def test_create_topics_raises_the_brokers_refusal_naming_the_topic(settings: Settings) -> None:
    one_broker = settings.kafka.model_copy(update={"topic_prefix": "refused.", "replication_factor": 3})
    with pytest.raises(InvalidReplicationFactorError, match=r"cannot create topic refused\.send\.requests"):
        await create_topics(one_broker)


def test_second_fetch_downloads_nothing(monkeypatch) -> None:
    jars = fetch_jars()
    monkeypatch.setattr("shutil.which", lambda _: None)  # no mvn: a cached fetch must not need it
    assert fetch_jars() == jars
    assert any(p.name.startswith("kafka_2.13-") for p in jars.iterdir())


def test_stop_leaves_no_broker_process(tmp_path) -> None:
    broker = LocalKafka(data_dir=tmp_path, port=free_port())
    broker.start()
    broker.wait_ready(timeout=90)
    pid = broker.pid()
    assert broker.running()
    broker.stop()
    assert not broker.running()
    assert pid is not None
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive


def test_free_port_never_hands_out_the_same_port_twice(tmp_path: Path) -> None:
    # CI once formatted a broker whose PLAINTEXT and CONTROLLER listeners got
    # the same port: the kernel gave the just-closed port to the next bind(0).
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    broker = LocalKafka(data_dir=tmp_path, port=free_port())
    assert broker.controller_port != broker.port
