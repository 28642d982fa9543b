"""Every webhook field has a home: account events, BSUIDs, edits, revokes, flows, calls, echoes, bounds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.contracts import AccountEventKind, DeadLetterReason, WebhookSkipReason
from pipeline.ingest.bounds import MAX_DEPTH, phone_number_label
from pipeline.ingest.webhook import MalformedWebhook, Skip, normalise
from tests.ingest.conftest import NUMBER, USER, status, value, webhook

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BSUID = "US.13491208655302741918"
PARENT = "US.ENT.11815799212886844830"


def change(field: str, value: dict[str, Any], waba: str = "102290129340398") -> bytes:
    return orjson.dumps({
        "object": "whatsapp_business_account",
        "entry": [{"id": waba, "time": 1764000000, "changes": [{"field": field, "value": value}]}],
    })


# --- account.events ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "content", "kind", "event"),
    [
        ("message_template_status_update",
         {"event": "PAUSED", "message_template_id": 1689556908129832, "message_template_name": "order_update",
          "message_template_language": "en_US", "reason": "NONE"},
         AccountEventKind.TEMPLATE_STATUS, "PAUSED"),
        ("message_template_status_update", {"event": "DISABLED", "message_template_name": "promo"},
         AccountEventKind.TEMPLATE_STATUS, "DISABLED"),
        ("message_template_quality_update",
         {"previous_quality_score": "YELLOW", "new_quality_score": "RED", "message_template_id": 806312974732579,
          "message_template_name": "welcome_template", "message_template_language": "en_US"},
         AccountEventKind.TEMPLATE_QUALITY, "RED"),
        ("account_update",
         {"event": "ACCOUNT_RESTRICTION",
          "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1641330498}]},
         AccountEventKind.ACCOUNT, "ACCOUNT_RESTRICTION"),
        ("template_category_update", {"message_template_id": 1, "new_category": "MARKETING",
                                      "previous_category": "UTILITY"},
         AccountEventKind.TEMPLATE_CATEGORY, "MARKETING"),
        ("message_template_components_update", {"message_template_id": 1, "message_template_element": "Hi {{1}}"},
         AccountEventKind.TEMPLATE_COMPONENTS, "COMPONENTS_UPDATED"),
        ("phone_number_quality_update", {"display_phone_number": "15550783881", "event": "DOWNGRADE",
                                         "current_limit": "TIER_1K"},
         AccountEventKind.PHONE_NUMBER_QUALITY, "DOWNGRADE"),
    ],
)
def test_account_fields_become_account_events(
    field: str, content: dict[str, Any], kind: AccountEventKind, event: str
) -> None:
    result = normalise(change(field, content), NOW)
    assert not result.problems
    assert not result.skipped
    [account] = result.account_events
    assert (account.kind, account.field, account.event, account.waba_id) == (kind, field, event, "102290129340398")
    assert account.value == content  # nothing Meta sent is lost
    assert account.received_at == NOW


def test_template_events_carry_the_template_and_the_previous_score() -> None:
    [event] = normalise(change("message_template_quality_update", {
        "previous_quality_score": "GREEN", "new_quality_score": "RED", "message_template_id": 806312974732579,
        "message_template_name": "welcome_template", "message_template_language": "en_US"}), NOW).account_events
    assert (event.template_id, event.template_name, event.template_language, event.previous) == (
        "806312974732579", "welcome_template", "en_US", "GREEN",
    )


def test_user_preferences_become_one_opt_out_event_per_user_with_their_bsuid() -> None:
    content = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": NUMBER},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": USER, "user_id": BSUID}],
        "user_preferences": [
            {"wa_id": USER, "detail": "User requested to stop marketing messages", "category": "marketing_messages",
             "value": "stop", "timestamp": 1731705721},
            {"wa_id": "16505550000", "category": "marketing_messages", "value": "resume", "timestamp": 1731705722},
        ],
    }
    events = normalise(change("user_preferences", content), NOW).account_events
    assert [(e.kind, e.event, e.user_wa_id, e.user_id) for e in events] == [
        (AccountEventKind.USER_PREFERENCE, "STOP", USER, BSUID),
        (AccountEventKind.USER_PREFERENCE, "RESUME", "16505550000", None),
    ]
    assert events[0].phone_number_id == NUMBER
    assert events[0].category == "marketing_messages"
    assert events[0].timestamp == datetime.fromtimestamp(1731705721, UTC)


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("smb_message_echoes", WebhookSkipReason.ECHO),
        ("smb_app_state_sync", WebhookSkipReason.APP_SYNC),
        ("history", WebhookSkipReason.APP_SYNC),
        ("calls", WebhookSkipReason.CALLS),
        ("something_meta_adds_next_year", WebhookSkipReason.UNKNOWN_FIELD),
    ],
)
def test_fields_without_a_record_are_counted_skips_with_a_reason(field: str, reason: WebhookSkipReason) -> None:
    result = normalise(change(field, {"messaging_product": "whatsapp"}), NOW)
    assert result.skipped == [Skip(field, reason)]
    assert (result.statuses, result.messages, result.account_events) == ([], [], [])
    assert not result.problems


# --- BSUID ---------------------------------------------------------------------------------------------


def test_a_bsuid_only_inbound_message_is_an_inbound_message_keyed_by_its_bsuid() -> None:
    content = value()
    content["contacts"] = [{"profile": {"name": "Ana", "username": "@ana"}, "user_id": BSUID, "parent_user_id": PARENT}]
    content["messages"] = [{"from_user_id": BSUID, "id": "wamid.in.bsuid", "timestamp": "1764000100",
                            "type": "text", "text": {"body": "hi, no number"}}]
    result = normalise(webhook(content), NOW)
    assert not result.problems
    [message] = result.messages
    assert (message.from_, message.user_id, message.parent_user_id) == (None, BSUID, PARENT)
    assert (message.profile_name, message.username, message.text) == ("Ana", "@ana", "hi, no number")
    assert message.user_key == BSUID


def test_inbound_messages_carry_the_senders_bsuid_from_contacts() -> None:
    content = value(messages=[{"from": USER, "id": "wamid.in.1", "timestamp": "1764000100", "type": "text",
                               "text": {"body": "hi"}}])
    content["contacts"] = [{"profile": {"name": "Ana"}, "wa_id": USER, "user_id": BSUID}]
    [message] = normalise(webhook(content), NOW).messages
    assert (message.from_, message.user_id, message.user_key) == (USER, BSUID, USER)


def test_statuses_carry_the_recipients_bsuid_from_the_status_or_contacts() -> None:
    content = value([status("wamid.A", "delivered"), status("wamid.B", "failed", recipient_user_id=BSUID)])
    content["contacts"] = [{"profile": {"name": "Ana"}, "wa_id": USER, "user_id": BSUID, "parent_user_id": PARENT}]
    events = normalise(webhook(content), NOW).statuses
    assert [(e.wamid, e.recipient_user_id) for e in events] == [("wamid.A", BSUID), ("wamid.B", BSUID)]
    assert events[0].recipient_parent_user_id == PARENT


def test_group_statuses_name_the_participant() -> None:
    group = status("wamid.G", "read", recipient_type="group", recipient_participant_id="16505550001",
                   recipient_participant_user_id="US.123456")
    [event] = normalise(webhook(value([group])), NOW).statuses
    assert (event.recipient_type, event.recipient_participant_id, event.recipient_participant_user_id) == (
        "group", "16505550001", "US.123456",
    )


# --- message kinds that used to be flattened -----------------------------------------------------------


def _message(kind: str, **content: object) -> dict[str, object]:
    return {"from": USER, "id": f"wamid.in.{kind}", "timestamp": "1764000100", "type": kind, **content}


def test_edits_revokes_flows_call_permissions_and_number_changes_keep_what_they_mean() -> None:
    flow = {"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent",
                                               "response_json": '{"flow_token": "tok-42", "rating": "4"}'}}
    call = {"type": "call_permission_reply", "call_permission_reply": {"response": "accept"}}
    body = webhook(value(messages=[
        _message("revoke", revoke={"original_message_id": "wamid.orig.1"}),
        _message("edit", edit={"original_message_id": "wamid.orig.2",
                               "message": {"type": "text", "text": {"body": "fixed typo"}}}),
        _message("interactive", interactive=flow),
        {**_message("interactive", interactive=call), "id": "wamid.in.call"},
        _message("system", system={"body": "User A changed from 1 to 2", "wa_id": "16505559876",
                                   "type": "user_changed_number"}),
    ]))
    result = normalise(body, NOW)
    assert not result.problems
    got = {m.wamid: m for m in result.messages}
    assert (got["wamid.in.revoke"].type, got["wamid.in.revoke"].context_wamid) == ("revoke", "wamid.orig.1")
    assert (got["wamid.in.edit"].text, got["wamid.in.edit"].context_wamid) == ("fixed typo", "wamid.orig.2")
    assert (got["wamid.in.interactive"].reply_id, got["wamid.in.interactive"].text) == ("tok-42", None)
    assert got["wamid.in.call"].reply_id == "accept"
    assert got["wamid.in.system"].new_wa_id == "16505559876"


# --- bounds (issue 13: validly signed webhooks must never wedge the ingest) ------------------------------


def _nested(depth: int) -> Any:
    node: Any = {"leaf": 1}
    for _ in range(depth):
        node = {"n": node}
    return node


def _deep_webhook(content: dict[str, Any]) -> bytes:
    # orjson refuses to write 600 levels (its limit is 254); the stdlib writes what a hostile sender would.
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "1", "changes": [{"field": "messages", "value": content}]}]}).encode()


def test_a_600_deep_pricing_object_is_refused_before_any_recursive_walk() -> None:
    body = _deep_webhook(value([status("wamid.A", "sent", pricing=_nested(600))]))
    with pytest.raises(MalformedWebhook) as caught:
        normalise(body, NOW)
    assert caught.value.reason is DeadLetterReason.TOO_DEEP
    assert f"more than {MAX_DEPTH} levels" in str(caught.value)


def test_a_600_deep_inbound_field_is_refused_too() -> None:
    body = _deep_webhook(value(messages=[_message("text", text={"body": "hi"}, extra=_nested(600))]))
    with pytest.raises(MalformedWebhook) as caught:
        normalise(body, NOW)
    assert caught.value.reason is DeadLetterReason.TOO_DEEP


def test_deep_but_within_bound_still_parses() -> None:
    body = webhook(value([status("wamid.A", "sent", pricing={"billable": True, "deep": _nested(MAX_DEPTH - 10)})]))
    assert [e.wamid for e in normalise(body, NOW).statuses] == ["wamid.A"]


def test_a_1_5_mb_recipient_id_is_refused_and_its_neighbours_go_through() -> None:
    body = webhook(value([status("wamid.big", "sent", recipient_id="1" * 1_500_000), status("wamid.ok", "sent")]))
    result = normalise(body, NOW)
    assert [e.wamid for e in result.statuses] == ["wamid.ok"]
    [problem] = result.problems
    assert problem.reason is DeadLetterReason.TOO_LARGE
    assert problem.detail.startswith("entry[0].changes[0].value.statuses[0]: 1,500,")


def test_a_long_recipient_id_within_the_item_bound_is_refused_by_the_contract() -> None:
    result = normalise(webhook(value([status("wamid.long", "sent", recipient_id="1" * 5000)])), NOW)
    [problem] = result.problems
    assert problem.reason is DeadLetterReason.SCHEMA_INVALID
    assert "statuses[0].recipient_id: string_too_long" in problem.detail


def test_a_1_2_mb_inbound_text_is_refused() -> None:
    body = webhook(value(messages=[_message("text", text={"body": "x" * 1_200_000}),
                                   {**_message("text", text={"body": "fine"}), "id": "wamid.in.ok"}]))
    result = normalise(body, NOW)
    assert [m.text for m in result.messages] == ["fine"]
    [problem] = result.problems
    assert problem.reason is DeadLetterReason.TOO_LARGE
    assert "messages[0]" in problem.detail


def test_a_200_kb_phone_number_id_is_refused_and_only_digits_become_a_label() -> None:
    result = normalise(webhook(value([status("wamid.A", "sent")], number="9" * 200_000)), NOW)
    assert not result.statuses
    [problem] = result.problems
    assert problem.reason is DeadLetterReason.TOO_LARGE
    assert problem.detail == "entry[0].changes[0].value.metadata.phone_number_id: 200,000 characters; at most 64"
    assert phone_number_label("106540352242922") == "106540352242922"
    assert phone_number_label(None) == "unknown"
    assert [phone_number_label(v) for v in ("<BUSINESS_PHONE_NUMBER_ID>", "١٢٣٤٥٦٧", "12", "1" * 21)] == ["other"] * 4
