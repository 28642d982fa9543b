"""Restarts, crashes and replicas of the deduper: every (wamid, status) reaches status.events exactly once.

A crash is simulated where it hurts: in the middle of a batch, after some of its outputs reached
Kafka and others did not (each output partition keeps a random prefix of what was sent to it, as a
killed process leaves it), and before the commit. A fresh deduper in the same group must then
restore, replay and end with exactly the events a single uninterrupted run would have written.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry.sdk.trace import TracerProvider

from pipeline.config import Settings
from pipeline.contracts import DeliveryStatus, Stage, StatusEvent
from pipeline.ingest.consumer import BatchHandler, Outbox, subscribe
from pipeline.ingest.deduper import Deduper
from pipeline.ingest.restore import PartitionState, Restorer, new_restore_consumer
from pipeline.ingest.state import MessageState
from pipeline.observability import new_broker, setup
from pipeline.topics import TopicCatalog, create_topics
from tests.ingest.conftest import end_offsets, eventually, ingest_settings, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STATUSES = [DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ, DeliveryStatus.FAILED]


class Crash(BaseException):
    """Escapes the batch handler's error handling, like a kill: no commit, nothing more written."""


class CrashingOutbox(Outbox):
    """Passes `healthy_flushes` batches through, then keeps a random prefix per destination and crashes."""

    def __init__(self, producer: AIOKafkaProducer, rng: random.Random, healthy_flushes: int) -> None:
        super().__init__(producer)
        self.rng = rng
        self.healthy_flushes = healthy_flushes
        self.cut: dict[tuple[str, int | None], int] = {}
        self.sent: Counter[tuple[str, int | None]] = Counter()

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> None:
        if self.healthy_flushes <= 0:
            destination = (topic, partition)
            cut = self.cut.setdefault(destination, self.rng.randint(0, 6))
            self.sent[destination] += 1
            if self.sent[destination] > cut:
                return  # lost with the process
        await super().send(topic, value, key, partition, headers)

    async def flush(self) -> None:
        await super().flush()
        if self.healthy_flushes <= 0:
            raise Crash
        self.healthy_flushes -= 1


class RecordingRestorer(Restorer):
    """Keeps what each restore found, so the test can show both repair paths were exercised."""

    found: list[PartitionState]

    async def restore(self, partition: int, committed: int) -> PartitionState:
        part = await super().restore(partition, committed)
        self.found.append(PartitionState(rolled_back=part.rolled_back, emitted=set(part.emitted)))
        return part


class Replica:
    """One deduper on a FastStream broker of its own, as a process of the ingest runs it."""

    def __init__(self, settings: Settings, outbox: Outbox, restore_consumer: AIOKafkaConsumer, max_records: int,
                 found: list[PartitionState] | None = None) -> None:
        topics = TopicCatalog(settings.kafka)
        group = f"{settings.ingest.group_id}-dedupe"
        restorer = RecordingRestorer(restore_consumer, topics, tail_window=8)  # small: the window must grow
        restorer.found = found if found is not None else []

        async def committed(tp: TopicPartition) -> int | None:
            return await self.batches.committed(tp)

        deduper = Deduper(outbox, topics, TracerProvider().get_tracer("test"), group, restorer,
                          committed=committed, retention_ms=8 * 86_400_000)
        self.batches = BatchHandler(deduper)
        self.broker = new_broker(settings.kafka, setup(Stage.INGEST, settings).tracer_provider, "ingest")
        subscribe(self.broker, self.batches, topics.status_updates, group, settings, max_records=max_records)
        self._commits: asyncio.Task[None] | None = None

    def assignment(self) -> set[TopicPartition]:
        consumer = self.batches.consumer
        return consumer.assignment() if consumer is not None else set()

    async def start(self) -> None:
        await self.broker.start()
        self._commits = asyncio.create_task(self.batches.commit_while_idle())

    async def stop(self) -> None:
        """As on SIGTERM: commit what is acknowledged, then leave the group."""
        await self.batches.close()
        await self.kill()

    async def kill(self) -> None:
        """As a killed process: nothing more is committed."""
        if self._commits is not None:
            self._commits.cancel()
        await self.broker.stop()


def update(wamid: str, kind: DeliveryStatus, ts: int) -> bytes:
    event = StatusEvent(wamid=wamid, status=kind, timestamp=datetime.fromtimestamp(ts, UTC), phone_number_id="1065")
    return event.model_dump_json().encode()


async def produce_updates(settings: Settings, rng: random.Random, wamids: list[str], count: int) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        for _ in range(count):
            wamid = rng.choice(wamids)
            await producer.send(TopicCatalog(settings.kafka).status_updates,
                                update(wamid, rng.choice(STATUSES), 1764000000 + rng.randint(0, 60)),
                                key=wamid.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def expected_events(settings: Settings) -> dict[str, list[str]]:
    """What one uninterrupted run emits: the state machine over each wamid's updates in offset order."""
    records = await read_topic(settings, TopicCatalog(settings.kafka).status_updates)
    states: dict[str, MessageState] = defaultdict(MessageState)
    out: dict[str, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = StatusEvent.model_validate_json(record.value)
        decision = states[event.wamid].apply(event.status, int(event.timestamp.timestamp()), record.offset, 0)
        out[event.wamid].extend(s.value for s, _ in decision.emit)
    return dict(out)


async def actual_events(settings: Settings) -> dict[str, list[str]]:
    records = await read_topic(settings, TopicCatalog(settings.kafka).status_events)
    out: dict[str, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = StatusEvent.model_validate_json(record.value)
        out[event.wamid].append(event.status.value)
    return dict(out)


async def caught_up(settings: Settings, group: str) -> bool:
    topic = TopicCatalog(settings.kafka).status_updates
    ends = await end_offsets(settings, topic)
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        for partition, end in ends.items():
            if (await consumer.committed(TopicPartition(topic, partition)) or 0) < end:
                return False
        return True
    finally:
        await consumer.stop()


@pytest.fixture
async def dedupe_settings(kafka_bootstrap: str) -> Settings:
    settings = ingest_settings(kafka_bootstrap)
    await create_topics(settings.kafka)
    return settings


async def test_crashes_mid_batch_lose_and_duplicate_nothing(dedupe_settings: Settings) -> None:
    settings = dedupe_settings
    group = f"{settings.ingest.group_id}-dedupe"
    rng = random.Random(20261124)
    wamids = [f"wamid.crash.{i}" for i in range(30)]
    restore_consumer = new_restore_consumer(settings)
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True)
    await restore_consumer.start()
    await producer.start()
    found: list[PartitionState] = []
    try:
        for cycle in range(4):
            await produce_updates(settings, rng, wamids, 120)
            # A deduper that crashes after a few healthy batches (small batches: many of them)…
            crashing = Replica(settings, CrashingOutbox(producer, rng, healthy_flushes=rng.randint(0, 3)),
                               restore_consumer, max_records=15)
            await crashing.start()
            try:
                await asyncio.wait_for(crashing.batches.crashed.wait(), 60)
            finally:
                await crashing.kill()
            # …and its replacement, which restores from Kafka and catches up.
            healthy = Replica(settings, Outbox(producer), restore_consumer, max_records=50, found=found)
            await healthy.start()
            try:
                await eventually(lambda: caught_up(settings, group), timeout=60, interval=0.3)
            finally:
                await healthy.stop()
            assert await actual_events(settings) == await expected_events(settings), f"cycle {cycle}"
        # Both repairs happened: states undone (their events were lost) and events kept (their state was).
        assert sum(part.rolled_back for part in found) > 0
        assert sum(len(part.emitted) for part in found) > 0
    finally:
        await producer.stop()
        await restore_consumer.stop()


async def test_replicas_share_the_partitions_and_hand_them_over(dedupe_settings: Settings) -> None:
    settings = dedupe_settings
    group = f"{settings.ingest.group_id}-dedupe"
    rng = random.Random(7)
    wamids = [f"wamid.replica.{i}" for i in range(40)]
    restore = [new_restore_consumer(settings) for _ in range(3)]
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True)
    await producer.start()
    for consumer in restore:
        await consumer.start()
    replicas = [Replica(settings, Outbox(producer), restore[i], max_records=20) for i in range(3)]
    started: list[Replica] = []
    try:
        for replica in replicas[:2]:
            await replica.start()
            started.append(replica)
        await eventually(lambda: _async(all(r.assignment() for r in replicas[:2])
                                        and len(replicas[0].assignment() | replicas[1].assignment()) == 3))
        await produce_updates(settings, rng, wamids, 150)
        await replicas[0].stop()  # one replica leaves mid-stream: its partitions move to the other
        started.remove(replicas[0])
        await produce_updates(settings, rng, wamids, 150)
        await replicas[2].start()  # a new one joins and takes some back
        started.append(replicas[2])
        await produce_updates(settings, rng, wamids, 150)
        await eventually(lambda: caught_up(settings, group), timeout=60)
        assert await actual_events(settings) == await expected_events(settings)
    finally:
        for replica in started:
            await replica.stop()
        for consumer in restore:
            await consumer.stop()
        await producer.stop()


async def _async(value: object) -> object:
    return value
