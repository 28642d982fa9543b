"""Envelope rules: phone numbers, ids, times, metadata; and the records on the other topics."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.contracts import (
    CallbackData,
    DeadLetter,
    DeadLetterReason,
    InboundMessage,
    SendRequest,
    Stage,
    StatusEvent,
    field_errors,
    new_request_id,
)

TEXT = {"type": "text", "text": {"body": "hi"}}


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        ("+1 (650) 555-1234", "+16505551234"),
        ("16505551234", "+16505551234"),
        ("0044 7700 900123", "+447700900123"),
        ("+55.11.98765.4321", "+5511987654321"),
    ],
)
def test_phone_numbers_are_normalised_to_e164(typed: str, normalised: str) -> None:
    assert SendRequest(to=typed, message=TEXT).to == normalised  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["+0123456789", "+1234567", "+1234567890123456", "phone", "+1 650 CALL NOW"])
def test_bad_phone_numbers_name_the_field_and_rule(bad: str) -> None:
    data = {"to": bad, "message": TEXT}
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    [error] = field_errors(info.value, data)
    assert error.field == "to"
    assert "E.164" in error.message


@given(st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True))
def test_every_e164_number_round_trips(number: str) -> None:
    assert SendRequest(to=number, message=TEXT).to == number  # type: ignore[arg-type]


def test_request_ids_are_unique_and_time_ordered() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("req_") and len(i) == 30 for i in ids)
    first, later = new_request_id(), None
    import time

    time.sleep(0.002)
    later = new_request_id()
    assert first[:14] <= later[:14]  # the 48-bit time prefix orders them


def test_times_must_carry_a_timezone() -> None:
    data = {"to": "+16505551234", "message": TEXT, "expires_at": "2026-01-01T00:00:00"}
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    assert "timezone" in str(info.value)
    ok = SendRequest.model_validate({**data, "expires_at": "2026-01-01T00:00:00Z"})
    assert ok.expires_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_metadata_is_bounded() -> None:
    SendRequest(to="+16505551234", message=TEXT, metadata={f"k{i}": "v" * 512 for i in range(20)})  # type: ignore[arg-type]
    for metadata in ({f"k{i}": "v" for i in range(21)}, {"k": "v" * 513}, {"k" * 65: "v"}):
        data = {"to": "+16505551234", "message": TEXT, "metadata": metadata}
        with pytest.raises(ValidationError) as info:
            SendRequest.model_validate(data)
        assert field_errors(info.value, data)[0].field == "metadata"


def test_unknown_envelope_fields_are_rejected() -> None:
    data = {"to": "+16505551234", "message": TEXT, "priority": "high"}
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    assert [(e.field, e.rule) for e in field_errors(info.value, data)] == [("priority", "extra_forbidden")]


def test_send_request_round_trips_through_json() -> None:
    req = SendRequest.model_validate(
        {"to": "+16505551234", "message": TEXT, "phone_number_id": "106540352242922", "idempotency_key": "k1"}
    )
    assert SendRequest.model_validate_json(req.model_dump_json()) == req


def test_callback_data_round_trip_and_bare_request_ids() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    encoded = CallbackData(request_id="req_1", traceparent=tp).encode()
    assert CallbackData.decode(encoded) == CallbackData(request_id="req_1", traceparent=tp)
    assert CallbackData.decode("req_01JD3Q8Z0M7W4K2B5N6P9R1S3V") == CallbackData(
        request_id="req_01JD3Q8Z0M7W4K2B5N6P9R1S3V"
    )
    assert CallbackData.decode(None) is None
    assert len(encoded) <= 512  # Meta's limit on biz_opaque_callback_data


def test_callback_data_carries_the_accepted_time_to_the_millisecond() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    accepted = datetime(2026, 11, 24, 23, 59, 58, 123000, tzinfo=UTC)
    full = CallbackData(request_id="req_1", traceparent=tp, accepted_at=accepted)
    assert full.encode() == f"req_1|{tp}|1795564798123"
    assert CallbackData.decode(full.encode()) == full
    untraced = CallbackData(request_id="req_1", accepted_at=accepted)
    assert untraced.encode() == "req_1||1795564798123"
    assert CallbackData.decode(untraced.encode()) == untraced
    # Another tool's third field is ignored, not an error: the status still joins its request.
    for odd in ("soon", "-1", "1" * 14, "\uff11\uff12\uff13"):  # the last: fullwidth digits
        assert CallbackData.decode(f"req_1|{tp}|{odd}") == CallbackData(request_id="req_1", traceparent=tp)


def test_status_event_reads_meta_epoch_strings() -> None:
    event = StatusEvent.model_validate({"wamid": "wamid.X", "status": "delivered", "timestamp": "1764000005"})
    assert event.timestamp == datetime.fromtimestamp(1764000005, tz=UTC)
    with pytest.raises(ValidationError):
        StatusEvent.model_validate({"wamid": "wamid.X", "status": "seen", "timestamp": "1764000005"})


def test_inbound_message_uses_metas_from_field() -> None:
    raw = {"wamid": "w", "from": "16505551234", "timestamp": "1764000060", "type": "text"}
    msg = InboundMessage.model_validate(raw)
    assert msg.from_ == "16505551234"
    assert '"from":"16505551234"' in msg.model_dump_json(by_alias=True)


def test_dead_letter_keeps_raw_bytes() -> None:
    raw = b"\xff\x00not json"
    letter = DeadLetter(
        stage=Stage.SENDER, reason=DeadLetterReason.INVALID_JSON, error="Expecting value", topic="send.requests",
        partition=1, offset=42, value_b64=DeadLetter.encode(raw) or "",
    )
    assert DeadLetter.model_validate_json(letter.model_dump_json()).raw_value() == raw


# --- recipients named by business-scoped user id (BSUID) ---------------------------------------
# Meta's "Business-scoped user IDs" page (developers.facebook.com/documentation/business-messaging/
# whatsapp/business-scoped-user-ids; dualhook.com/docs/contacts-bsuid-api-changes summarises it): the
# send body's `recipient` takes a BSUID or parent BSUID; the country, a period, up to 128 letters and digits.

BSUID = "US.13491208655302741918"


@pytest.mark.parametrize("bsuid", [BSUID, "US.ENT.11815799212886844830", "PT.aZ09", "BR." + "7" * 128])
def test_a_recipient_named_by_bsuid_is_kept_exactly(bsuid: str) -> None:
    request = SendRequest.model_validate({"recipient_user_id": bsuid, "message": TEXT})
    assert (request.recipient_user_id, request.to, request.recipient_key) == (bsuid, None, bsuid)
    assert SendRequest.model_validate_json(request.model_dump_json()) == request


@pytest.mark.parametrize(
    "bad", ["us.13491208655302741918", "USA.1349", "US.", "US.1349-1208", "16505551234", "US.ENT.", "BR." + "7" * 129]
)
def test_malformed_bsuids_name_the_field_and_the_rule(bad: str) -> None:
    data = {"recipient_user_id": bad, "message": TEXT}
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    [error] = field_errors(info.value, data)
    assert (error.field, error.rule) == ("recipient_user_id", "value_error")
    assert "business-scoped user id" in error.message
    assert "US.13491208655302741918" in error.message


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"to": "+16505551234", "recipient_user_id": BSUID}, "recipient_ambiguous"),
        ({}, "missing"),
        ({"to": None}, "missing"),
        ({"recipient_user_id": None}, "missing"),
    ],
)
def test_exactly_one_of_to_or_recipient_user_id(data: dict[str, str | None], rule: str) -> None:
    data = {**data, "message": TEXT}
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    [error] = field_errors(info.value, data)
    assert (error.field, error.rule) == ("to", rule)
    assert "`to`" in error.message
    assert "`recipient_user_id`" in error.message


def test_the_recipient_rule_is_reported_with_the_other_problems_at_once() -> None:
    data = {"message": {"type": "text", "text": {"body": ""}}}
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    assert {(e.field, e.rule) for e in field_errors(info.value, data)} == {
        ("to", "missing"), ("message.text.body", "string_too_short")
    }


def test_a_bad_phone_number_is_not_also_reported_as_a_missing_recipient() -> None:
    data = {"to": "12", "message": TEXT}
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    [error] = field_errors(info.value, data)
    assert error.field == "to"
    assert "E.164" in error.message
