"""Validly signed but hostile webhooks never wedge the ingest (issue 13, finding 1).

Each used to stop its `webhooks.raw` partition for good: a 600-deep object failed serialisation on every
batch, a 1.5 MB field made a record larger than its topic (re-published every second), a 200 KB
phone_number_id became a metric label. Now each is dead-lettered with its reason and the next good
webhook *in the same partition* is processed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from pipeline.contracts import DeadLetter
from tests.ingest.conftest import (
    Running,
    end_offsets,
    eventually,
    new_wamid,
    read_topic,
    status,
    value,
    webhook,
)

pytestmark = pytest.mark.kafka


def _nested(depth: int) -> Any:
    node: Any = {"leaf": 1}
    for _ in range(depth):
        node = {"n": node}
    return node


def _deep(content: dict[str, Any]) -> bytes:
    # orjson will not write 600 levels; a hostile sender's JSON library will.
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "1", "changes": [{"field": "messages", "value": content}]}]}).encode()


async def _dead_letter_of(ingest: Running, body: bytes, start: dict[int, int]) -> DeadLetter:
    """The dead letter of `body`: the original's digest and size say which (its bytes may be cut)."""
    digest = hashlib.sha256(body).hexdigest()

    async def find() -> DeadLetter | None:
        for record in await read_topic(ingest.settings, ingest.topics.dead_letters, start):
            letter = DeadLetter.model_validate_json(record.value)
            if letter.value_sha256 == digest:
                assert letter.value_size == len(body)
                assert body.startswith(letter.raw_value())
                return letter
        return None

    letter: DeadLetter = await eventually(find, timeout=60)
    return letter


async def _good_one_after_it_in_its_partition_is_processed(ingest: Running, letter: DeadLetter) -> None:
    """Post good webhooks until one lands behind the bad one in its partition; that one must come out."""
    for _ in range(40):
        wamid = new_wamid()
        assert (await ingest.post(webhook(value([status(wamid, "sent")])))).status_code == 200
        raw = await read_topic(ingest.settings, ingest.topics.webhooks_raw, {letter.partition: letter.offset})
        if any(r.partition == letter.partition and r.offset > letter.offset and wamid.encode() in r.value
               for r in raw):
            await ingest.wait_events({wamid}, count=1, timeout=60)
            return
    raise AssertionError(f"no good webhook landed in partition {letter.partition} after 40 posts")


@pytest.mark.parametrize(
    ("name", "reason", "detail"),
    [
        ("deep_pricing", "too_deep", "(body): nested more than 64 levels deep"),
        ("deep_inbound_field", "too_deep", "(body): nested more than 64 levels deep"),
        ("huge_recipient_id", "too_large", "entry[0].changes[0].value.statuses[0]: 1,5"),
        ("huge_inbound_text", "too_large", "entry[0].changes[0].value.messages[0]: 1,2"),
        ("huge_phone_number_id", "too_large", "entry[0].changes[0].value.metadata.phone_number_id: 200,000"),
    ],
)
async def test_a_hostile_webhook_is_dead_lettered_and_the_next_one_is_processed(
    ingest: Running, name: str, reason: str, detail: str
) -> None:
    neighbour = new_wamid()  # a good status in the same body still goes through
    bodies = {
        "deep_pricing": lambda: _deep(value([status(new_wamid(), "sent", pricing=_nested(600))])),
        "deep_inbound_field": lambda: _deep(value(messages=[
            {"from": "16505551234", "id": new_wamid(), "timestamp": "1764000100", "type": "text",
             "text": {"body": "hi"}, "extra": _nested(600)}])),
        "huge_recipient_id": lambda: webhook(value([
            status(new_wamid(), "sent", recipient_id="1" * 1_500_000), status(neighbour, "sent")])),
        "huge_inbound_text": lambda: webhook(value(messages=[
            {"from": "16505551234", "id": new_wamid(), "timestamp": "1764000100", "type": "text",
             "text": {"body": "x" * 1_200_000}}], statuses=[status(neighbour, "sent")])),
        "huge_phone_number_id": lambda: webhook(value([status(new_wamid(), "sent")], number="9" * 200_000)),
    }
    body = bodies[name]()
    start = await end_offsets(ingest.settings, ingest.topics.dead_letters)
    dead = await ingest.metric("delivery_dead_letters_total", stage="ingest", reason=reason)
    assert (await ingest.post(body)).status_code == 200  # signed: stored, judged downstream

    letter = await _dead_letter_of(ingest, body, start)
    assert letter.reason.value == reason
    assert letter.error.startswith(detail), letter.error[:200]
    assert await ingest.metric("delivery_dead_letters_total", stage="ingest", reason=reason) == dead + 1
    if name in ("huge_recipient_id", "huge_inbound_text"):
        await ingest.wait_events({neighbour}, count=1, timeout=60)
    await _good_one_after_it_in_its_partition_is_processed(ingest, letter)


async def test_no_record_larger_than_its_topic_is_ever_sent_so_nothing_repeats(ingest: Running) -> None:
    """The wedge re-published a batch every second (21 webhooks became 347 records): count exactly once."""
    start = await end_offsets(ingest.settings, ingest.topics.status_updates)
    marker = new_wamid()
    body = webhook(value([status(new_wamid(), "sent", recipient_id="1" * 1_500_000), status(marker, "sent")]))
    for _ in range(3):
        assert (await ingest.post(body)).status_code == 200
    await ingest.wait_events({marker}, count=1, timeout=60)

    async def three() -> list[Any]:
        found = [r for r in await read_topic(ingest.settings, ingest.topics.status_updates, start)
                 if r.key == marker.encode()]
        return found if len(found) >= 3 else []

    await eventually(three, timeout=60)
    updates = await read_topic(ingest.settings, ingest.topics.status_updates, start)
    assert len([r for r in updates if r.key == marker.encode()]) == 3  # once per post, never re-published
    assert all(len(r.value) < 64 * 1024 for r in updates)


async def test_only_valid_phone_number_ids_become_labels(ingest: Running) -> None:
    before = len((await ingest.http.get("/metrics")).content)
    others = await ingest.metric("delivery_status_events_total", status="sent", phone_number_id="other")
    wamids = [new_wamid() for _ in range(5)]
    for i, wamid in enumerate(wamids):  # five different bogus ids: one `other` series, not five
        assert (await ingest.post(webhook(value([status(wamid, "sent")], number=f"<NUMBER-{i}>")))).status_code == 200
    await ingest.wait_events(set(wamids), count=5, timeout=60)
    assert await ingest.metric("delivery_status_events_total", status="sent", phone_number_id="other") == others + 5
    text = (await ingest.http.get("/metrics")).text
    assert "<NUMBER-" not in text
    assert len(text.encode()) - before < 8 * 1024
