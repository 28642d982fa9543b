"""Webhooks in over HTTP, events out of Kafka: normaliser and deduper together on the real broker."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.contracts import CallbackData, DeadLetter, DeliveryStatus, ErrorClass, InboundMessage
from pipeline.contracts.dead_letters import DEAD_LETTER_VALUE_LIMIT
from tests.ingest.conftest import (
    USER,
    Running,
    end_offsets,
    eventually,
    header,
    new_wamid,
    read_topic,
    signed,
    status,
    value,
    webhook,
)

pytestmark = pytest.mark.kafka

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def kinds(pairs: list) -> list[str]:  # type: ignore[type-arg]
    return [event.status.value for _, event in pairs]


async def test_every_fixture_flows_to_its_topic(ingest: Running, fixtures_dir: Path) -> None:
    read_wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    failed_wamid = "wamid.HBgLMTY1MDU1NTk5OTkVAgARGBJGRkFBMDAxMjM0NTY3ODkwAA=="
    # Webhooks spread over the raw topic's partitions carry no order between them (nor does Meta
    # promise one): to see each status as itself, post the next once the previous one is through.
    for count, name in enumerate(("status-sent", "status-delivered", "status-read"), start=1):
        assert (await ingest.post((fixtures_dir / f"{name}.json").read_bytes())).status_code == 200
        await ingest.wait_events({read_wamid}, count=count)
    for name in ("status-failed", "inbound-text", "inbound-button-reply"):
        assert (await ingest.post((fixtures_dir / f"{name}.json").read_bytes())).status_code == 200
    events = await ingest.wait_events({read_wamid, failed_wamid}, count=4)
    mine = [e for _, e in events if e.wamid == read_wamid]
    assert [e.status.value for e in mine] == ["sent", "delivered", "read"]
    assert {e.request_id for e in mine} == {"req_01JD3Q8Z0M7W4K2B5N6P9R1S3T"}
    assert mine[0].conversation is not None
    assert mine[0].conversation.origin_type == "utility"
    [failed] = [e for _, e in events if e.wamid == failed_wamid]
    assert failed.status is DeliveryStatus.FAILED
    assert failed.errors[0].code == 131026

    async def inbound() -> list[InboundMessage]:
        found = await ingest.inbound({
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUI0RTc4QkQxMjM0NTY3ODkwMQA=",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUI0RTc4QkQxMjM0NTY3ODkwMgA=",
        })
        return found if len(found) == 2 else []

    messages = await eventually(inbound)
    assert sorted((m.type, m.text) for m in messages) == [("interactive", "Track"), ("text", "Where is my order?")]
    records = await read_topic(ingest.settings, ingest.topics.inbound_messages)
    assert {r.key for r in records} == {USER.encode()}  # keyed by the user: per-user order


async def test_events_are_keyed_and_co_partitioned_with_their_state(ingest: Running) -> None:
    wamid = new_wamid()
    await ingest.post(webhook(value([status(wamid, "sent")])))
    [(event_record, _)] = await ingest.wait_events({wamid}, count=1)
    updates = [r for r in await read_topic(ingest.settings, ingest.topics.status_updates) if r.key == wamid.encode()]
    states = [r for r in await read_topic(ingest.settings, ingest.topics.status_state) if r.key == wamid.encode()]
    assert event_record.key == wamid.encode()
    assert {r.partition for r in updates} == {r.partition for r in states} == {event_record.partition}
    assert orjson.loads(states[-1].value)["status"] == "sent"


async def test_many_statuses_and_entries_in_one_post(ingest: Running) -> None:
    a, b, c = new_wamid(), new_wamid(), new_wamid()
    body = webhook(
        value([status(a, "sent", 100), status(b, "sent", 100), status(c, "sent", 100)]),
        value([status(a, "delivered", 101), status(b, "delivered", 102)]),
        value([status(a, "read", 110)]),
        entries=2,
    )
    assert (await ingest.post(body)).status_code == 200
    events = await ingest.wait_events({a, b, c}, count=6)
    by_wamid = {w: [e.status.value for _, e in events if e.wamid == w] for w in (a, b, c)}
    assert by_wamid == {a: ["sent", "delivered", "read"], b: ["sent", "delivered"], c: ["sent"]}


async def test_read_before_delivered_emits_implied_events_and_drops_the_late_ones(ingest: Running) -> None:
    wamid = new_wamid()
    out_of_order = await ingest.metric("delivery_status_out_of_order_total")
    to_read = await ingest.metric("delivery_transition_seconds_count", transition="delivered_to_read")
    await ingest.post(webhook(value([status(wamid, "read", 1764000030, callback=f"req_x|{TRACEPARENT}")])))
    events = await ingest.wait_events({wamid}, count=3)
    assert kinds(events) == ["sent", "delivered", "read"]
    assert [header(r, "implied-by") for r, _ in events] == ["read", "read", None]
    assert {e.timestamp.timestamp() for _, e in events} == {1764000030}
    assert all(e.request_id == "req_x" and e.traceparent == TRACEPARENT for _, e in events)

    # The real delivered and sent arrive late: recorded (they give the latency), never emitted.
    await ingest.post(webhook(value([status(wamid, "delivered", 1764000002), status(wamid, "sent", 1764000000)])))
    await eventually(lambda: _metric_at_least(ingest, "delivery_status_out_of_order_total", out_of_order + 2))
    assert await ingest.metric("delivery_transition_seconds_count", transition="delivered_to_read") == to_read + 1
    assert kinds(await ingest.events({wamid})) == ["sent", "delivered", "read"]


async def _metric_at_least(ingest: Running, name: str, value_: float, **labels: str) -> bool:
    return await ingest.metric(name, **labels) >= value_


async def test_redelivered_webhooks_and_repeated_statuses_give_no_second_event(ingest: Running) -> None:
    wamid, marker = new_wamid(), new_wamid()
    duplicates = await ingest.metric("delivery_status_duplicates_total")
    body = webhook(value([status(wamid, "sent"), status(wamid, "sent")]))  # repeated inside one body, too
    for _ in range(3):  # Meta redelivers the same bytes
        assert (await ingest.post(body)).status_code == 200
    await ingest.post(webhook(value([status(marker, "sent")])))
    await ingest.wait_events({marker}, count=1)
    assert kinds(await ingest.events({wamid})) == ["sent"]
    await eventually(lambda: _metric_at_least(ingest, "delivery_status_duplicates_total", duplicates + 5))


async def test_failed_statuses_count_by_class_and_bounded_code(ingest: Running) -> None:
    known, unknown, bare = new_wamid(), new_wamid(), new_wamid()

    def failure(code: int) -> dict[str, object]:
        return {"code": code, "title": "t", "message": "m", "error_data": {"details": "d"}}

    before = {
        "known": await ingest.metric("delivery_failures_total", error_class="undeliverable", error_code="131026"),
        "unknown": await ingest.metric("delivery_failures_total", error_class="other", error_code="other"),
        "bare": await ingest.metric("delivery_failures_total", error_class="none", error_code="none"),
        "events": await ingest.metric("delivery_status_events_total", status="failed"),
    }
    await ingest.post(webhook(value([
        status(known, "failed", errors=[failure(131026)]),
        status(unknown, "failed", errors=[failure(999999)]),
        status(bare, "failed"),
    ])))
    events = await ingest.wait_events({known, unknown, bare}, count=3)
    [known_event] = [e for _, e in events if e.wamid == known]
    assert known_event.errors[0].error_class is ErrorClass.UNDELIVERABLE
    assert await ingest.metric("delivery_failures_total", error_class="undeliverable",
                               error_code="131026") == before["known"] + 1
    assert await ingest.metric("delivery_failures_total", error_class="other",
                               error_code="other") == before["unknown"] + 1
    assert await ingest.metric("delivery_failures_total", error_class="none", error_code="none") == before["bare"] + 1
    assert await ingest.metric("delivery_status_events_total", status="failed") == before["events"] + 3


async def test_inbound_message_kinds_are_published_and_counted(ingest: Running) -> None:
    def message(kind: str, **content: object) -> dict[str, object]:
        return {"from": USER, "id": new_wamid(), "timestamp": "1764000100", "type": kind, **content}

    sent = [
        message("button", button={"text": "Yes", "payload": "p1"}),
        message("interactive", interactive={"type": "list_reply", "list_reply": {"id": "r2", "title": "Two"}}),
        message("reaction", reaction={"message_id": "wamid.x", "emoji": "👍"}),
        message("location", location={"latitude": 1.0, "longitude": 2.0}),
        message("hologram", hologram={"x": 1}),
    ]
    before = {k: await ingest.metric("delivery_inbound_messages_total", type=k)
              for k in ("button", "interactive", "reaction", "location", "other")}
    await ingest.post(webhook(value(messages=sent)))

    async def arrived() -> list[InboundMessage]:
        found = await ingest.inbound({str(m["id"]) for m in sent})
        return found if len(found) == len(sent) else []

    messages = {m.type: m for m in await eventually(arrived)}
    assert (messages["button"].reply_id, messages["interactive"].reply_id) == ("p1", "r2")
    assert messages["hologram"].raw["hologram"] == {"x": 1}
    for kind in before:
        assert await ingest.metric("delivery_inbound_messages_total", type=kind) == before[kind] + 1


async def test_malformed_webhooks_are_dead_lettered_with_reason_and_replayable_bytes(ingest: Running) -> None:
    start = await end_offsets(ingest.settings, ingest.topics.dead_letters)
    malformed = await ingest.metric("delivery_webhooks_total", outcome="malformed")
    good = new_wamid()
    not_json = b'{"object": "whatsapp_business_account", "entry": [ oops'
    half_bad = webhook(value([status(good, "sent"), {"status": "sent", "timestamp": "1764000000"}]))
    for body in (not_json, half_bad):
        assert (await ingest.post(body)).status_code == 200  # signed, so stored; judged downstream

    async def letters() -> list[DeadLetter]:
        found = [DeadLetter.model_validate_json(r.value)
                 for r in await read_topic(ingest.settings, ingest.topics.dead_letters, start)]
        return found if len(found) >= 2 else []

    by_reason = {letter.reason.value: letter for letter in await eventually(letters)}
    assert by_reason["invalid_json"].raw_value() == not_json
    assert by_reason["invalid_json"].topic == ingest.topics.webhooks_raw
    assert by_reason["schema_invalid"].error.startswith("entry[0].changes[0].value.statuses[1].id: missing")
    assert base64.b64decode(by_reason["schema_invalid"].value_b64) == half_bad
    assert kinds(await ingest.wait_events({good}, count=1)) == ["sent"]  # its good neighbour went through
    assert await ingest.metric("delivery_webhooks_total", outcome="malformed") == malformed + 2
    assert await ingest.metric("delivery_dead_letters_total", stage="ingest", reason="invalid_json") >= 1


async def test_a_bad_record_on_status_updates_is_dead_lettered_and_the_rest_go_on(ingest: Running) -> None:
    start = await end_offsets(ingest.settings, ingest.topics.dead_letters)
    producer = AIOKafkaProducer(**ingest.settings.kafka.client_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(ingest.topics.status_updates, b'{"wamid": "x"}', key=b"x")
    finally:
        await producer.stop()
    after = new_wamid()
    await ingest.post(webhook(value([status(after, "sent")])))
    await ingest.wait_events({after}, count=1)
    letters = [DeadLetter.model_validate_json(r.value)
               for r in await read_topic(ingest.settings, ingest.topics.dead_letters, start)]
    [letter] = [x for x in letters if x.topic == ingest.topics.status_updates]
    assert letter.reason.value == "schema_invalid"
    assert "status" in letter.error


async def test_unknown_field_kinds_are_skipped_without_dead_letters(ingest: Running) -> None:
    start = await end_offsets(ingest.settings, ingest.topics.dead_letters)
    marker = new_wamid()
    await ingest.post(webhook(value([status(new_wamid(), "sent")]), field="account_update"))
    await ingest.post(webhook(value([status(marker, "sent")])))
    await ingest.wait_events({marker}, count=1)
    assert await read_topic(ingest.settings, ingest.topics.dead_letters, start) == []


async def test_each_status_span_links_to_the_send_trace_and_joins_the_webhook_trace(ingest: Running) -> None:
    wamid = new_wamid()
    callback = CallbackData(request_id="req_traced", traceparent=TRACEPARENT).encode()
    body = webhook(value([status(wamid, "delivered", callback=callback)]))
    assert (await ingest.post(body, headers=signed(body))).status_code == 200
    await ingest.wait_events({wamid}, count=2)

    def status_spans() -> list:  # type: ignore[type-arg]
        return [s for s in ingest.spans.get_finished_spans()
                if s.name == f"process {ingest.topics.status_updates}"
                and s.attributes.get("delivery.wamid") == wamid]

    [span] = await eventually(lambda: _async(status_spans()))
    assert [format(link.context.trace_id, "032x") for link in span.links] == [TRACE_ID]
    assert span.attributes["delivery.request_id"] == "req_traced"
    server = [s for s in ingest.spans.get_finished_spans()
              if s.name == "POST /webhooks/whatsapp" and s.context.trace_id == span.context.trace_id]
    assert server, "the status span continues the webhook request's trace"
    assert server[0].attributes["http.response.status_code"] == 200


async def _async(value_: object) -> object:
    return value_


async def test_a_webhook_near_metas_3_mb_limit_is_stored_and_processed(ingest: Running) -> None:
    import os

    wamid = new_wamid()
    # Hardly compressible filler in a field we do not read: the broker must take it all the same.
    filler = base64.b64encode(os.urandom(2_100_000)).decode()
    body = webhook(value([status(wamid, "delivered")], filler=filler))
    assert 2_800_000 < len(body) < ingest.settings.ingest.max_body_bytes
    assert (await ingest.post(body)).status_code == 200
    assert kinds(await ingest.wait_events({wamid}, count=2)) == ["sent", "delivered"]

    # …and one that large that is not JSON still reaches the dead letters, bounded, with the original's
    # size and digest (no poison pill; the whole body stays on webhooks.raw).
    start = await end_offsets(ingest.settings, ingest.topics.dead_letters)
    broken = b"{" + filler.encode()
    assert (await ingest.post(broken)).status_code == 200

    async def letter() -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(r.value)
                for r in await read_topic(ingest.settings, ingest.topics.dead_letters, start)]

    [dead] = await eventually(letter)
    assert dead.reason.value == "invalid_json"
    assert dead.raw_value() == broken[:DEAD_LETTER_VALUE_LIMIT]
    assert (dead.value_truncated, dead.value_size) == (True, len(broken))
    assert dead.value_sha256 == hashlib.sha256(broken).hexdigest()
