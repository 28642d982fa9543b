"""An ingest replica restarting on its disk with 1 M tracked messages reads only the changelog's tail.

The store is built fast, through its own API, with the same 1 M records on `status.state` on the real
broker (as a previous run would have left both); then a tail the store lacks is written to the
changelog (a previous process that crashed between its changelog write and its local write). The
consumers start on that disk and must answer duplicates for messages from before the restart — from
the store and from the tail — while reading no more than the tail.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.config import Settings
from pipeline.contracts import DeliveryStatus, Stage, StatusEvent
from pipeline.ingest import Ingest
from pipeline.ingest.consumer import Outbox, new_producer
from pipeline.ingest.deduper import Deduper
from pipeline.ingest.state import MessageState
from pipeline.ingest.store import StateStore
from pipeline.observability import setup
from pipeline.topics import TopicCatalog, create_topics
from tests.ingest.conftest import eventually, ingest_settings, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TRACKED = 1_000_000
TAIL = 300
PARTITION = 0
CHUNK = 10_000


def tracked(i: int) -> str:
    return f"wamid.restart.{i:07d}"


def read_state(now_ms: int) -> bytes:
    """A read message whose three statuses came from status.updates offsets 0 to 2 (below the commit)."""
    state = MessageState()
    for offset, status in enumerate((DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ)):
        state.apply(status, 1764000000 + offset, offset, now_ms)
    return state.to_json()


def update(wamid: str, status: DeliveryStatus) -> bytes:
    event = StatusEvent(wamid=wamid, status=status, timestamp=datetime.fromtimestamp(1764000100, UTC),
                        phone_number_id="106540352242922")
    return event.model_dump_json().encode()


async def write_changelog(settings: Settings, items: list[tuple[str, bytes]]) -> int:
    """Produce `items` to status.state's partition; return its end offset."""
    producer = new_producer(settings, linger_seconds=0.02)
    await producer.start()
    try:
        outbox = Outbox(producer)
        topic = TopicCatalog(settings.kafka).status_state
        end = 0
        for start in range(0, len(items), 50_000):
            for wamid, value in items[start:start + 50_000]:
                await outbox.send(topic, value, key=wamid.encode(), partition=PARTITION)
            await outbox.flush()
            end = outbox.written[(topic, PARTITION)]
        return end
    finally:
        await producer.stop()


async def test_a_restart_on_the_same_disk_reads_only_the_changelog_tail(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = ingest_settings(kafka_bootstrap, components="consumers", state_dir=tmp_path / "state")
    await create_topics(settings.kafka)
    topics = TopicCatalog(settings.kafka)
    now_ms = int(time.time() * 1000)
    value = read_state(now_ms)

    # status.updates offsets 0 to 2 (the updates the states were made from), committed by the group.
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        for status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ):
            await producer.send_and_wait(topics.status_updates, update("wamid.restart.origin", status),
                                         partition=PARTITION)
    finally:
        await producer.stop()
    group = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=f"{settings.ingest.group_id}-dedupe",
                             enable_auto_commit=False)
    await group.start()
    try:
        group.assign([TopicPartition(topics.status_updates, PARTITION)])
        await group.commit({TopicPartition(topics.status_updates, PARTITION): 3})
    finally:
        await group.stop()

    # The changelog and the local store, as a previous run left them: the same 1 M states, then a tail.
    checkpoint = await write_changelog(settings, [(tracked(i), value) for i in range(TRACKED)])
    store = StateStore.open(settings.ingest.state_dir, PARTITION, 8 * 1024 * 1024)
    try:
        for start in range(0, TRACKED, CHUNK):
            store.write(((tracked(i), value, now_ms, 2) for i in range(start, start + CHUNK)),
                        checkpoint if start + CHUNK >= TRACKED else None)
        assert len(store) == TRACKED
        assert store.checkpoint() == checkpoint
    finally:
        store.close()
    tail = [(f"wamid.restart.tail.{i}", value) for i in range(TAIL)]
    end = await write_changelog(settings, tail)
    assert end == checkpoint + TAIL

    # Updates after the restart: duplicates of old messages (store and tail), one forward status of an
    # old message, one new message.
    olds = [tracked(i) for i in (0, 1, 499_999, TRACKED - 1)]
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        for wamid in olds:
            await producer.send_and_wait(topics.status_updates, update(wamid, DeliveryStatus.DELIVERED),
                                         partition=PARTITION)
        for wamid, _ in tail[:5]:
            await producer.send_and_wait(topics.status_updates, update(wamid, DeliveryStatus.READ), partition=PARTITION)
        await producer.send_and_wait(topics.status_updates, update(tracked(7), DeliveryStatus.PLAYED),
                                     partition=PARTITION)
        await producer.send_and_wait(topics.status_updates, update("wamid.restart.new", DeliveryStatus.SENT),
                                     partition=PARTITION)
    finally:
        await producer.stop()

    started = time.monotonic()
    async with Ingest(settings, setup(Stage.INGEST, settings)) as ingest:

        async def events() -> list[object]:
            found = await read_topic(settings, topics.status_events)
            return found if len(found) >= 2 else []

        records = await eventually(events, timeout=120)
        restart_s = time.monotonic() - started
        deduper = next(b.processor for b in ingest.batches if isinstance(b.processor, Deduper))
        part = deduper.partitions[TopicPartition(topics.status_updates, PARTITION)]
        assert part.replayed == TAIL, "a restart on the same disk reads only the changelog after the checkpoint"
        assert part.store.checkpoint() is not None
        assert part.store.checkpoint() >= end  # the state record of this batch moved it on
        assert len(part.store) == TRACKED + TAIL + 1
    assert sorted((r.key.decode(), dict(r.headers)["status"].decode()) for r in records) == [
        (tracked(7), "played"), ("wamid.restart.new", "sent"),
    ], "old messages' duplicates, from the store and from the tail, produce no event"
    print(f"restart with {TRACKED:,} tracked messages: first events after {restart_s:.1f} s")
