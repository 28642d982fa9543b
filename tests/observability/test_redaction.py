"""The redaction rules themselves: keys, token shapes, configured values, phone numbers, URLs."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from pipeline.observability.redaction import (
    REDACTED,
    mask_phone,
    redact,
    register_secrets,
    scrub_text,
    scrub_url,
)


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+16505551234", "+1*******234"),  # one-digit country code
        ("447700900123", "+44*******123"),  # two digits, no plus
        ("+351912345678", "+351******678"),  # three digits
        ("12345", "***"),  # too short to be a number worth keeping anything of
        ("not-a-number", "***"),
    ],
)
def test_mask_phone_keeps_country_and_last_three_digits(number: str, masked: str) -> None:
    assert mask_phone(number) == masked


def test_secret_keys_are_redacted_at_any_depth_and_empty_values_stay_visible() -> None:
    event = {
        "headers": {"Authorization": "Bearer abc.def.ghi.jkl", "X-Hub-Signature-256": "sha256=ff"},
        "items": [{"api_key": "k"}, {"client_secret": ""}],
        "password": None,
        "pin_token": 123456,
        "signature_valid": True,
    }
    assert redact(event) == {
        "headers": {"Authorization": REDACTED, "X-Hub-Signature-256": REDACTED},
        "items": [{"api_key": REDACTED}, {"client_secret": ""}],  # "" tells the operator it is unset
        "password": None,
        "pin_token": REDACTED,  # a number under a secret's name is still a secret
        "signature_valid": True,  # a flag says whether, never what
    }


def test_objects_that_are_not_plain_data_become_scrubbed_text() -> None:
    @dataclass
    class Attempt:
        to: str
        token: str
        attempt: int

    class Opaque:
        def __str__(self) -> str:
            return "opaque with Bearer sk_live_0123456789"

    assert redact(Attempt("+16505551234", "t0ken-value", 2)) == {"to": "+1*******234", "token": REDACTED, "attempt": 2}
    assert redact(Opaque()) == f"opaque with Bearer {REDACTED}"
    assert redact(ValueError("Bearer abcdefghijkl")) == f"ValueError: Bearer {REDACTED}"
    assert redact(SecretStr("x")) == REDACTED
    assert redact(b"EAAGm0PX4ZCpsBAKZBZCx7fZBq0") == REDACTED


def test_configured_secrets_vanish_from_text_whatever_surrounds_them() -> None:
    register_secrets([SecretStr("s3cr3t-app-value"), "short", None])
    assert scrub_text("signing with s3cr3t-app-value!") == f"signing with {REDACTED}!"
    assert scrub_text("a short word") == "a short word"  # values under 8 characters are not tracked


def test_secret_query_parameters_are_redacted_in_urls() -> None:
    assert (
        scrub_url("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=abc&hub.challenge=9")
        == f"/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={REDACTED}&hub.challenge=9"
    )
    assert scrub_url("https://graph.example/v23.0/me?access_token=EAAx&fields=id#frag") == (
        f"https://graph.example/v23.0/me?access_token={REDACTED}&fields=id#frag"
    )
    assert scrub_url("/v1/messages?page=2") == "/v1/messages?page=2"


def test_wamids_become_the_same_short_reference_wherever_they_are_logged() -> None:
    from pipeline.observability.redaction import wamid_ref

    wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    ref = wamid_ref(wamid)
    assert ref.startswith("wm_")
    assert len(ref) == 15
    assert "1650555" not in ref
    assert wamid_ref(wamid) == ref
    assert wamid_ref(wamid + "x") != ref
    assert redact({"wamid": wamid, "context_wamid": wamid, "message_id": wamid}) == {
        "wamid": ref, "context_wamid": ref, "message_id": ref,
    }
    # Quoted in free text (an error about a message), it becomes the same reference.
    assert redact({"error": f"message {wamid} not found"}) == {"error": f"message {ref} not found"}


def test_bsuids_become_a_stable_reference_under_their_keys_under_to_and_in_text() -> None:
    from pipeline.observability.redaction import bsuid_ref

    bsuid, parent = "US.13491208655302741918", "US.ENT.11815799212886844830"
    ref = bsuid_ref(bsuid)
    assert ref.startswith("US.bs_")
    assert len(ref) == 18
    assert "1349" not in ref
    assert bsuid_ref(bsuid) == ref != bsuid_ref(parent)
    logged = redact({
        "to": bsuid, "recipient": bsuid, "recipient_user_id": bsuid, "user_id": bsuid, "parent_user_id": parent,
        "error": f"Graph API code 131062: recipient {bsuid} is not supported", "phone": "+16505551234",
    })
    assert logged == {
        "to": ref, "recipient": ref, "recipient_user_id": ref, "user_id": ref, "parent_user_id": bsuid_ref(parent),
        "error": f"Graph API code 131062: recipient {ref} is not supported", "phone": "+1*******234",
    }
    # Text that only looks a little like one stays readable.
    assert scrub_text("OK.Thanks, see US.ENT docs v1.2") == "OK.Thanks, see US.ENT docs v1.2"


_KEYS = ["access_token", "X-Api-Key", "to", "wa_id", "wamid", "user_id", "request_id", "error", "count", "note"]
_PHONE, _TOKEN, _SECRET = "+16505551234", "EAAGm0PX4ZCpsBAKZBZCx7fZBq0", "registered-s3cret-value"
_TEXTS = st.sampled_from(["", "ok", _PHONE, f"to {_PHONE} failed", _TOKEN, f"Bearer {_TOKEN[:12]}", f"x{_SECRET}y",
                          "US.13491208655302741918", "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUZDMEIz"])
_VALUES = st.recursive(
    st.one_of(_TEXTS, st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.none(), st.booleans()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(event=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=6))
def test_no_rendered_event_holds_a_secret_a_token_or_a_phone_number(event: dict[str, object]) -> None:
    register_secrets([_SECRET])
    rendered = orjson.dumps(redact(event)).decode()
    for leaked in (_PHONE, _PHONE[1:], _TOKEN, _TOKEN[:12], _SECRET, "13491208655302741918", "HBgLMTY1MDU1"):
        assert leaked not in rendered

    def walk(value: object, key: str | None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif key in ("access_token", "X-Api-Key"):
            assert value in (REDACTED, "", None, True, False)  # a secret's value never shows

    walk(redact(event), None)
