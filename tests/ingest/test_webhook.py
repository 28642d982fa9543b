"""Meta's webhook bodies → StatusEvent / InboundMessage: every fixture and the shapes around them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from pipeline.contracts import CallbackData, DeadLetterReason, DeliveryStatus, ErrorClass, WebhookSkipReason
from pipeline.ingest.webhook import MalformedWebhook, Problem, Skip, normalise
from tests.ingest.conftest import NUMBER, USER, status, value, webhook

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_status_fixtures_become_one_event_each(fixtures_dir: Path) -> None:
    for name, kind in [("sent", "sent"), ("delivered", "delivered"), ("read", "read"), ("failed", "failed")]:
        result = normalise((fixtures_dir / f"status-{name}.json").read_bytes(), NOW)
        assert not result.problems
        assert not result.messages
        [event] = result.statuses
        assert event.status is DeliveryStatus(kind)
        assert event.wamid.startswith("wamid.")
        assert event.phone_number_id == "106540352242922"
        assert event.request_id is not None
        assert event.request_id.startswith("req_01JD3Q8Z0M7W4K2B5N6P9R1S3")
        assert event.traceparent is None  # the fixtures carry a bare request id
        assert event.received_at == NOW


def test_sent_fixture_keeps_timestamp_recipient_pricing_and_conversation(fixtures_dir: Path) -> None:
    [event] = normalise((fixtures_dir / "status-sent.json").read_bytes(), NOW).statuses
    assert event.timestamp == datetime.fromtimestamp(1764000000, UTC)
    assert event.recipient_id == "16505551234"
    assert event.pricing is not None
    assert (event.pricing.billable, event.pricing.pricing_model, event.pricing.category, event.pricing.type) == (
        True, "PMP", "utility", "regular",
    )
    assert event.conversation is not None
    assert event.conversation.id == "8a1f3c0e5b7d9f21"
    assert event.conversation.origin_type == "utility"
    assert event.conversation.expiration_timestamp == datetime.fromtimestamp(1764086400, UTC)


def test_failed_fixture_carries_the_error_with_its_class(fixtures_dir: Path) -> None:
    [event] = normalise((fixtures_dir / "status-failed.json").read_bytes(), NOW).statuses
    [error] = event.errors
    assert error.code == 131026
    assert error.error_class is ErrorClass.UNDELIVERABLE
    assert error.title == "Message undeliverable"
    assert error.details is not None
    assert "could not be delivered" in error.details


def test_inbound_fixtures(fixtures_dir: Path) -> None:
    [text] = normalise((fixtures_dir / "inbound-text.json").read_bytes(), NOW).messages
    assert (text.type, text.text, text.from_, text.profile_name) == ("text", "Where is my order?", USER, "Ana Souza")
    assert text.phone_number_id == NUMBER
    assert text.timestamp == datetime.fromtimestamp(1764000040, UTC)

    [reply] = normalise((fixtures_dir / "inbound-button-reply.json").read_bytes(), NOW).messages
    assert (reply.type, reply.reply_id, reply.reply_title, reply.text) == ("interactive", "track", "Track", "Track")
    assert reply.context_wamid == "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    assert reply.raw["interactive"]["button_reply"] == {"id": "track", "title": "Track"}


def test_many_statuses_over_many_entries_and_changes_in_one_body() -> None:
    body = webhook(
        value([status("wamid.A", "sent"), status("wamid.B", "sent")]),
        value([status("wamid.A", "delivered", 1764000001)], number="106540352200000"),
        value([status("wamid.C", "read", 1764000009)]),
        entries=2,
    )
    result = normalise(body, NOW)
    assert [(e.wamid, e.status.value) for e in result.statuses] == [
        ("wamid.A", "sent"), ("wamid.B", "sent"), ("wamid.C", "read"), ("wamid.A", "delivered"),
    ]
    assert result.statuses[3].phone_number_id == "106540352200000"  # each change's own metadata


def test_callback_data_gives_request_id_accepted_time_and_only_a_valid_traceparent() -> None:
    accepted = datetime(2026, 11, 24, 12, 0, 0, 250000, tzinfo=UTC)
    good = CallbackData(request_id="req_1", traceparent=TRACEPARENT, accepted_at=accepted).encode()
    body = webhook(value([
        status("wamid.A", "sent", callback=good),
        status("wamid.B", "sent", callback="req_2|not-a-traceparent|later"),
        status("wamid.C", "sent", callback="someone-elses-data"),
        status("wamid.D", "sent"),
    ]))
    events = normalise(body, NOW).statuses
    assert [(e.request_id, e.traceparent, e.accepted_at) for e in events] == [
        ("req_1", TRACEPARENT, accepted), ("req_2", None, None), ("someone-elses-data", None, None),
        (None, None, None),
    ]


def test_unknown_fields_are_ignored_and_unknown_field_kinds_skipped() -> None:
    body = orjson.dumps({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "time": 1764000000, "changes": [
            {"field": "message_template_status_update", "value": {"event": "APPROVED"}},
            {"field": "messages", "value": value([status("wamid.A", "delivered", brand_new_field={"x": 1})],
                                                 something_new=True)},
        ]}],
    })
    result = normalise(body, NOW)
    assert [e.wamid for e in result.statuses] == ["wamid.A"]
    assert [(e.kind.value, e.event) for e in result.account_events] == [("template_status", "APPROVED")]
    assert not result.skipped
    assert not result.problems

    unknown = webhook(value(), field="brand_new_field")
    assert normalise(unknown, NOW).skipped == [Skip("brand_new_field", WebhookSkipReason.UNKNOWN_FIELD)]


def test_pricing_and_conversation_keep_fields_we_do_not_model() -> None:
    body = webhook(value([status("wamid.A", "sent",
                                 pricing={"billable": False, "pricing_model": "PMP", "category": "service",
                                          "new_tier": "t1"},
                                 conversation={"id": "c1", "origin": {"type": "service"}, "new_flag": True})]))
    [event] = normalise(body, NOW).statuses
    assert event.pricing is not None
    assert event.pricing.model_extra == {"new_tier": "t1"}
    assert event.conversation is not None
    assert event.conversation.model_extra == {"new_flag": True}


def test_one_bad_status_is_a_problem_naming_the_field_and_its_neighbours_go_through() -> None:
    body = webhook(value([
        status("wamid.A", "sent"),
        {"status": "delivered", "timestamp": "1764000001"},            # no id
        status("wamid.C", "deleted"),                                   # a status we do not model
        status("wamid.D", "read", ts="yesterday"),                      # type: ignore[arg-type]
    ]))
    result = normalise(body, NOW)
    assert [e.wamid for e in result.statuses] == ["wamid.A"]
    assert len(result.problems) == 3
    assert {p.reason for p in result.problems} == {DeadLetterReason.SCHEMA_INVALID}
    assert result.problems[0].detail.startswith("entry[0].changes[0].value.statuses[1].id: missing")
    assert result.problems[1].detail.startswith("entry[0].changes[0].value.statuses[2].status: enum")
    assert result.problems[2].detail.startswith("entry[0].changes[0].value.statuses[3].timestamp:")


def test_statuses_that_are_not_a_list_is_a_problem() -> None:
    broken = value()
    broken["statuses"] = {"id": "x"}
    result = normalise(webhook(broken), NOW)
    assert result.problems == [
        Problem(DeadLetterReason.SCHEMA_INVALID, "entry[0].changes[0].value.statuses: list_type — must be a list")
    ]


def test_system_errors_are_collected() -> None:
    result = normalise(webhook(value(errors=[{"code": 131000, "title": "Something went wrong"}])), NOW)
    assert result.system_errors == [{"code": 131000, "title": "Something went wrong"}]


@pytest.mark.parametrize(
    ("body", "reason", "names"),
    [
        (b"{not json", DeadLetterReason.INVALID_JSON, "(body)"),
        (b'{"object": "page", "entry": []}', DeadLetterReason.MALFORMED_WEBHOOK, "object"),
        (b'{"object": "whatsapp_business_account"}', DeadLetterReason.MALFORMED_WEBHOOK, "entry"),
        (b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {}}]}]}',
         DeadLetterReason.MALFORMED_WEBHOOK, "entry[0].changes[0].field"),
        (b"[]", DeadLetterReason.MALFORMED_WEBHOOK, "(body)"),
    ],
)
def test_bodies_that_are_not_webhooks_raise_with_reason_and_field(body: bytes, reason: DeadLetterReason,
                                                                 names: str) -> None:
    with pytest.raises(MalformedWebhook) as caught:
        normalise(body, NOW)
    assert caught.value.reason is reason
    assert str(caught.value).startswith(names)


def _message(kind: str, **content: object) -> dict[str, object]:
    return {"from": USER, "id": f"wamid.in.{kind}", "timestamp": "1764000100", "type": kind, **content}


def test_inbound_message_kinds() -> None:
    body = webhook(value(messages=[
        _message("text", text={"body": "hi"}, context={"from": "15550783881", "id": "wamid.out.1"}),
        _message("button", button={"text": "Yes", "payload": "confirm-42"}),
        _message("interactive", interactive={"type": "list_reply",
                                             "list_reply": {"id": "row-2", "title": "Tomorrow", "description": "d"}}),
        _message("reaction", reaction={"message_id": "wamid.out.2", "emoji": "👍"}),
        _message("location", location={"latitude": 38.7, "longitude": -9.1, "name": "Lisbon"}),
        _message("image", image={"id": "media-1", "mime_type": "image/jpeg", "caption": "receipt"}),
        _message("brand_new_kind", brand_new_kind={"x": 1}),
    ]))
    result = normalise(body, NOW)
    assert not result.problems
    got = {m.type: m for m in result.messages}
    assert (got["text"].text, got["text"].context_wamid) == ("hi", "wamid.out.1")
    assert (got["button"].reply_id, got["button"].reply_title) == ("confirm-42", "Yes")
    assert (got["interactive"].reply_id, got["interactive"].reply_title) == ("row-2", "Tomorrow")
    assert (got["reaction"].text, got["reaction"].context_wamid) == ("👍", "wamid.out.2")
    assert got["location"].raw["location"]["name"] == "Lisbon"
    assert got["location"].text is None
    assert got["image"].text == "receipt"
    assert got["brand_new_kind"].raw["brand_new_kind"] == {"x": 1}
    assert all(m.profile_name == "Ana Souza" and m.from_ == USER for m in result.messages)


def test_an_inbound_message_without_sender_is_a_problem() -> None:
    bad = {"id": "wamid.in.x", "timestamp": "1764000100", "type": "text", "text": {"body": "hi"}}
    result = normalise(webhook(value(messages=[bad, _message("text", text={"body": "ok"})])), NOW)
    assert [m.text for m in result.messages] == ["ok"]
    assert [p.detail for p in result.problems] == [
        "entry[0].changes[0].value.messages[0].from: missing — Field required"
    ]
