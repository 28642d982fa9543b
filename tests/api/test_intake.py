"""Sanitation and validation of one item, before anything reaches Kafka."""

from __future__ import annotations

import json
from typing import Any

import hypothesis.strategies as st
import orjson
from hypothesis import given

from pipeline.api.intake import (
    MESSAGE_TYPES,
    Admitted,
    Intake,
    Rejection,
    may_hold_controls,
    message_type_label,
    strip_controls,
)
from pipeline.config import Settings
from pipeline.contracts import utcnow
from tests.api.conftest import text_request, with_api


def admit(settings: Settings, data: Any, key: str | None = None) -> Admitted | Rejection:
    return Intake(settings).admit(data, idempotency_key=key, now=utcnow())


def test_control_characters_are_stripped_but_line_breaks_and_tabs_kept() -> None:
    assert strip_controls({"a": ["x\x00y\x07", {"b": "line\nnext\ttab\r\x7f\x9b"}], "n": 3}) == {
        "a": ["xy", {"b": "line\nnext\ttab\r"}],
        "n": 3,
    }


def test_admitted_request_is_normalised_and_stamped(settings: Settings) -> None:
    now = utcnow()
    result = Intake(settings).admit(text_request(to="0044 7700 900123", body="a\x00b"), idempotency_key="k", now=now)
    assert isinstance(result, Admitted)
    request = result.request
    assert request.to == "+447700900123"
    assert request.message.text.body == "ab"  # type: ignore[union-attr]
    assert request.phone_number_id == settings.whatsapp.phone_number_id
    assert request.accepted_at == now
    assert request.idempotency_key == "k"


def test_fingerprint_ignores_what_the_api_stamps_but_not_what_the_caller_chose(settings: Settings) -> None:
    def fingerprint(data: dict[str, Any]) -> str:
        result = admit(settings, data)
        assert isinstance(result, Admitted)
        return result.fingerprint

    base = fingerprint(text_request())
    assert fingerprint(text_request(to="+1 650 555 1234")) == base  # same number, other spelling
    assert fingerprint(text_request(accepted_at="2020-01-01T00:00:00Z")) == base  # overwritten anyway
    assert fingerprint(text_request(body="other")) != base
    assert fingerprint(text_request(request_id="req_mine")) != base


def test_every_problem_in_one_rejection(settings: Settings) -> None:
    strict = with_api(settings, forbidden_patterns=[r"(?i)lottery"])
    strict = strict.model_copy(update={"whatsapp": strict.whatsapp.model_copy(update={"phone_number_id": None})})
    data = {
        "to": "abc",
        "message": {"type": "interactive", "interactive": {
            "type": "button", "body": {"text": "Win the LOTTERY"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "1", "title": "x" * 21}}]}}},
        "idempotency_key": "body-key",
    }
    result = admit(strict, data, key="header-key")
    assert isinstance(result, Rejection)
    assert result.status == 422
    found = {(f.field, f.rule) for f in result.fields}
    assert found == {
        ("to", "value_error"),
        ("message.interactive.action.buttons[0].reply.title", "string_too_long"),
        ("message.interactive.body.text", "forbidden_content"),
        ("idempotency_key", "idempotency_key_mismatch"),
        ("phone_number_id", "missing"),
    }
    limit = next(f.limit for f in result.fields if f.rule == "string_too_long")
    assert limit == 20


def test_non_objects_are_rejected(settings: Settings) -> None:
    data: Any
    for data in ([], "text", 3, None):
        result = admit(settings, data)
        assert isinstance(result, Rejection)
        assert result.fields[0].field == "(body)"


def test_metric_label_is_bounded() -> None:
    assert message_type_label({"message": {"type": "text"}}) == "text"
    assert message_type_label({"message": {"type": "../../etc"}}) == "unknown"
    assert message_type_label({"message": "text"}) == "unknown"
    assert message_type_label([]) == "unknown"
    assert {"text", "template", "interactive", "image", "reaction", "location"} <= MESSAGE_TYPES


# What a JSON body can hold (no lone surrogates, integers a JSON parser accepts).
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@given(value=json_values, encoder=st.sampled_from(["orjson", "ascii", "unicode"]))
def test_skipping_the_walk_is_safe_whatever_the_encoder(value: Any, encoder: str) -> None:
    raw = (
        orjson.dumps(value)
        if encoder == "orjson"
        else json.dumps(value, ensure_ascii=encoder == "ascii").encode()
    )
    if not may_hold_controls(raw):
        assert strip_controls(orjson.loads(raw)) == orjson.loads(raw)
