"""The stage on the real broker with a real receiver: routing, order, signatures, ids, commits."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.config import Settings
from pipeline.contracts import DeadLetter, DeadLetterReason, DeliveryStatus
from pipeline.topics import TopicCatalog
from tests.notify.conftest import (
    NUMBER,
    OTHER_NUMBER,
    SECRET,
    Records,
    inbound,
    notify_settings,
    result,
    running_notify,
    status,
)
from tests.notify.receiver import Receiver

pytestmark = pytest.mark.kafka


async def test_a_numbers_events_reach_its_endpoint_in_order_signed_with_stable_ids(
    settings: Settings, topics: TopicCatalog
) -> None:
    async with Receiver(SECRET) as mine, Receiver(SECRET) as theirs:
        # A hold the result cannot outlast even when its first produce to a new topic is retried (the
        # suite's 0.5 s was once too short on a loaded machine); the result ends the hold, not the clock.
        config = notify_settings(settings, [mine.subscription(NUMBER), theirs.subscription(OTHER_NUMBER)],
                                 order_hold_seconds=10.0)
        async with running_notify(config), Records(settings, topics) as records:
            # The statuses come first, as they may when the result's transaction commits late.
            await records.send(status("wamid.A", DeliveryStatus.SENT, "req_A"))
            await records.send(result("req_A", "wamid.A"))
            await records.send(status("wamid.A", DeliveryStatus.DELIVERED, "req_A"),
                               status("wamid.A", DeliveryStatus.READ, "req_A"))
            await mine.wait_for(lambda calls: len(calls) >= 4)
            # Records of different topics reach notify in no promised order; a reply comes after the read.
            await records.send(inbound("wamid.IN1"), inbound("wamid.IN2", number=OTHER_NUMBER))
            await mine.wait_for(lambda calls: len(calls) >= 5)
            await theirs.wait_for(lambda calls: len(calls) >= 1)
    events = mine.events()
    assert [e["type"] for e in events] == [
        "send.result", "status.sent", "status.delivered", "status.read", "inbound.message"
    ]
    assert all(c.signed for c in mine.calls + theirs.calls)
    assert [e["wamid"] for e in theirs.events()] == ["wamid.IN2"]
    assert events[0]["request_id"] == "req_A"
    assert events[0]["data"]["outcome"] == "sent"
    assert events[4]["data"]["text"] == "hi"
    assert events[4]["data"]["from"] == "16505551234"
    assert len({e["event_id"] for e in events}) == 5
    assert mine.calls[0].headers["x-delivery-event-id"] == events[0]["event_id"]


async def dead_letters(settings: Settings, topics: TopicCatalog, at_least: int) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(topics.dead_letters, **settings.kafka.client_kwargs(), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        async with asyncio.timeout(60):
            while len(letters) < at_least:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    letters.extend(DeadLetter.model_validate_json(r.value) for r in records)
    finally:
        await consumer.stop()
    return letters


async def committed(settings: Settings, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def test_an_undeliverable_event_is_dead_lettered_with_the_endpoints_last_answer(
    settings: Settings, topics: TopicCatalog
) -> None:
    async with Receiver(SECRET, status=500) as broken, Receiver(SECRET) as fine:
        config = notify_settings(settings, [broken.subscription(NUMBER), fine.subscription(OTHER_NUMBER)],
                                 max_attempts=2, retry_base_seconds=0.05, retry_max_seconds=0.1)
        async with running_notify(config), Records(settings, topics) as records:
            await records.send(inbound("wamid.LOST"))
            await records.raw(topics.inbound_messages, b'{"not": "an inbound message"}')
            await records.raw(topics.inbound_messages, b"\xff not json")
            await records.send(inbound("wamid.FINE", number=OTHER_NUMBER))
            letters = await dead_letters(settings, topics, at_least=3)
            await fine.wait_for(lambda calls: len(calls) >= 1)
    by_reason = {letter.reason: letter for letter in letters}
    undeliverable = by_reason[DeadLetterReason.CALLBACK_UNDELIVERABLE]
    assert undeliverable.stage == "notify"
    assert "2 attempt(s); last answer: HTTP 500: nope" in undeliverable.error
    assert f"{NUMBER}->127.0.0.1" in undeliverable.error
    assert undeliverable.topic == topics.inbound_messages
    assert b"wamid.LOST" in undeliverable.raw_value()  # the original record, replayable to its topic
    assert undeliverable.headers["notify-event-id"].startswith("evt_")
    assert broken.refused == 2
    assert by_reason[DeadLetterReason.SCHEMA_INVALID].error.startswith("wamid:")
    assert DeadLetterReason.INVALID_JSON in by_reason
    assert [e["wamid"] for e in fine.events()] == ["wamid.FINE"]  # records behind the bad ones go on


async def test_offsets_are_committed_only_past_events_that_ended(settings: Settings, topics: TopicCatalog) -> None:
    receiver = Receiver(SECRET)
    config = notify_settings(settings, [receiver.subscription(NUMBER)], retry_base_seconds=0.1,
                             retry_max_seconds=0.2, breaker_reset_seconds=0.5)
    group = config.notify.group_id
    async with running_notify(config), Records(settings, topics) as records:
        await records.send(*(inbound(f"wamid.W{n}", sender="16505550001") for n in range(5)))
        await asyncio.sleep(3.0)  # receiver down: nothing ends, nothing may be committed
        assert await committed(settings, group, topics.inbound_messages) == 0
        await receiver.up()
        await receiver.wait_for(lambda calls: len(calls) >= 5)
        async with asyncio.timeout(30):
            while await committed(settings, group, topics.inbound_messages) < 5:
                await asyncio.sleep(0.2)
    await receiver.down()
    assert [e["wamid"] for e in receiver.events()] == [f"wamid.W{n}" for n in range(5)]
