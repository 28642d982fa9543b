"""The stage on the real broker with a real receiver: routing, order, signatures, ids, commits."""

from __future__ import annotations

import pytest

from pipeline.config import Settings
from pipeline.contracts import DeliveryStatus
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
        config = notify_settings(settings, [mine.subscription(NUMBER), theirs.subscription(OTHER_NUMBER)])
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
