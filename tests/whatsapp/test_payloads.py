"""The payload builder: SendRequest -> Meta's JSON, for every message type."""

from __future__ import annotations

import pytest

from pipeline.contracts import CallbackData, SendRequest
from pipeline.whatsapp.payloads import MAX_CALLBACK_DATA, message_payload
from tests.whatsapp.conftest import BODIES, USER, request


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_every_type_is_meta_envelope_plus_the_body_unchanged(kind: str) -> None:
    payload = message_payload(request(kind, to="+1 (650) 555-1234"))

    assert payload.pop("messaging_product") == "whatsapp"
    assert payload.pop("recipient_type") == "individual"
    assert payload.pop("to") == "16505551234"  # E.164 digits, no +
    expected = BODIES[kind]
    assert payload["type"] == expected["type"]
    body = payload[expected["type"]]
    # Everything the producer wrote reaches Meta as written (defaults may be added, nothing lost).
    assert _contains(body, expected[expected["type"]])
    assert "context" not in payload
    assert "biz_opaque_callback_data" not in payload


def _contains(actual: object, expected: object) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(_contains, actual, expected))
    return actual == expected


def test_no_nulls_reach_meta() -> None:
    payload = message_payload(request("interactive_list"))
    assert "null" not in repr(payload).lower()
    assert "None" not in repr(payload)
    assert "header" not in payload["interactive"]
    assert "footer" not in payload["interactive"]
    assert "description" not in payload["interactive"]["action"]["sections"][1]["rows"][0]


def test_reply_and_callback_data() -> None:
    callback = CallbackData(request_id="req_01J", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01").encode()
    payload = message_payload(request("text", reply_to="wamid.ABC"), callback_data=callback)

    assert payload["context"] == {"message_id": "wamid.ABC"}
    assert payload["biz_opaque_callback_data"] == callback


def test_empty_reaction_emoji_is_sent_to_remove_the_reaction() -> None:
    body = {"type": "reaction", "reaction": {"message_id": "wamid.X"}}
    removal = SendRequest.model_validate({"to": USER, "message": body})
    assert message_payload(removal)["reaction"] == {"message_id": "wamid.X", "emoji": ""}


def test_callback_data_over_meta_limit_names_field_and_rule() -> None:
    with pytest.raises(ValueError, match=r"callback_data: .*at most 512 characters; got 513"):
        message_payload(request(), callback_data="x" * (MAX_CALLBACK_DATA + 1))


def test_a_request_addressed_by_bsuid_goes_to_meta_in_recipient_without_to() -> None:
    # Meta's "Business-scoped user IDs" page: the send body names a BSUID in `recipient`; `to` would win
    # over it, so a BSUID send must not carry one.
    bsuid = "US.13491208655302741918"
    payload = message_payload(SendRequest.model_validate({"recipient_user_id": bsuid, "message": BODIES["text"]}))
    assert payload["recipient"] == bsuid
    assert "to" not in payload
    envelope = (payload["messaging_product"], payload["recipient_type"], payload["type"])
    assert envelope == ("whatsapp", "individual", "text")
    assert "recipient" not in message_payload(request("text"))
