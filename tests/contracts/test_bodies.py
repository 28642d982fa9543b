"""Every message type is accepted at each of Meta's limits and rejected just past it, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.contracts import SendRequest, field_errors

TO = "+16505551234"


def request(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"to": TO, "message": message, **extra}


def rejected(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    return [(e.field, e.rule) for e in field_errors(info.value, data)]


def text(n: int) -> dict[str, Any]:
    return {"type": "text", "text": {"body": "x" * n}}


def buttons(*titles: str, body: str = "Pick one", ids: list[str] | None = None) -> dict[str, Any]:
    ids = ids or [f"b{i}" for i in range(len(titles))]
    return {
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": body},
            "action": {
                "buttons": [{"type": "reply", "reply": {"id": i, "title": t}} for i, t in zip(ids, titles, strict=True)]
            },
        },
    }


def list_message(rows_per_section: list[int], *, row_title: str = "Row", description: str = "d") -> dict[str, Any]:
    sections = []
    counter = 0
    for s, count in enumerate(rows_per_section):
        rows = []
        for _ in range(count):
            rows.append({"id": f"r{counter}", "title": row_title, "description": description})
            counter += 1
        sections.append({"title": f"S{s}", "rows": rows})
    return {
        "type": "interactive",
        "interactive": {"type": "list", "body": {"text": "Choose"}, "action": {"button": "Open", "sections": sections}},
    }


# --- text -------------------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=4096))
def test_text_body_up_to_4096_characters_is_accepted(n: int) -> None:
    assert SendRequest.model_validate(request(text(n))).message.type == "text"


@given(st.integers(min_value=4097, max_value=6000))
def test_text_body_past_4096_is_rejected_naming_the_field(n: int) -> None:
    assert rejected(request(text(n))) == [("message.text.body", "string_too_long")]


def test_text_body_counts_characters_not_bytes() -> None:
    emoji_body = {"type": "text", "text": {"body": "é" * 4096}}
    SendRequest.model_validate(request(emoji_body))


def test_empty_text_is_rejected() -> None:
    assert rejected(request(text(0))) == [("message.text.body", "string_too_short")]


# --- interactive buttons ----------------------------------------------------------------------------


def test_one_to_three_buttons_accepted_four_rejected() -> None:
    for n in (1, 2, 3):
        SendRequest.model_validate(request(buttons(*[f"T{i}" for i in range(n)])))
    assert rejected(request(buttons("A", "B", "C", "D"))) == [("message.interactive.action.buttons", "too_long")]
    assert rejected(request({"type": "interactive", "interactive": {
        "type": "button", "body": {"text": "x"}, "action": {"buttons": []}}})) == [
        ("message.interactive.action.buttons", "too_short")
    ]


def test_button_title_limit_is_20() -> None:
    SendRequest.model_validate(request(buttons("x" * 20)))
    assert rejected(request(buttons("x" * 21))) == [
        ("message.interactive.action.buttons[0].reply.title", "string_too_long")
    ]


def test_button_titles_and_ids_must_be_unique() -> None:
    errors = rejected(request(buttons("Same", "Same")))
    assert errors == [("message.interactive.action", "value_error")]
    errors = rejected(request(buttons("A", "B", ids=["same", "same"])))
    assert errors == [("message.interactive.action", "value_error")]


def test_button_id_limit_is_256_and_body_1024() -> None:
    SendRequest.model_validate(request(buttons("A", ids=["i" * 256], body="b" * 1024)))
    assert rejected(request(buttons("A", ids=["i" * 257]))) == [
        ("message.interactive.action.buttons[0].reply.id", "string_too_long")
    ]
    assert rejected(request(buttons("A", body="b" * 1025))) == [("message.interactive.body.text", "string_too_long")]


def test_footer_and_text_header_limit_is_60() -> None:
    ok = buttons("A")
    ok["interactive"]["footer"] = {"text": "f" * 60}
    ok["interactive"]["header"] = {"type": "text", "text": "h" * 60}
    SendRequest.model_validate(request(ok))
    bad = buttons("A")
    bad["interactive"]["footer"] = {"text": "f" * 61}
    bad["interactive"]["header"] = {"type": "text", "text": "h" * 61}
    assert sorted(rejected(request(bad))) == [
        ("message.interactive.footer.text", "string_too_long"),
        ("message.interactive.header.text", "string_too_long"),
    ]


def test_media_header_needs_its_media() -> None:
    ok = buttons("A")
    ok["interactive"]["header"] = {"type": "image", "image": {"link": "https://example.com/a.png"}}
    SendRequest.model_validate(request(ok))
    bad = buttons("A")
    bad["interactive"]["header"] = {"type": "video"}
    assert rejected(request(bad)) == [("message.interactive.header", "value_error")]


# --- interactive list -------------------------------------------------------------------------------


def test_list_allows_ten_rows_in_total() -> None:
    SendRequest.model_validate(request(list_message([10])))
    SendRequest.model_validate(request(list_message([5, 5])))
    assert rejected(request(list_message([6, 5]))) == [("message.interactive.action", "value_error")]
    assert rejected(request(list_message([11]))) == [("message.interactive.action.sections[0].rows", "too_long")]


def test_list_allows_ten_sections() -> None:
    SendRequest.model_validate(request(list_message([1] * 10)))
    errors = rejected(request(list_message([1] * 11)))
    assert ("message.interactive.action.sections", "too_long") in errors


def test_list_row_title_24_description_72() -> None:
    SendRequest.model_validate(request(list_message([1], row_title="t" * 24, description="d" * 72)))
    assert rejected(request(list_message([1], row_title="t" * 25))) == [
        ("message.interactive.action.sections[0].rows[0].title", "string_too_long")
    ]
    assert rejected(request(list_message([1], description="d" * 73))) == [
        ("message.interactive.action.sections[0].rows[0].description", "string_too_long")
    ]


def test_list_button_label_20_and_section_title_24() -> None:
    ok = list_message([1])
    ok["interactive"]["action"]["button"] = "b" * 20
    ok["interactive"]["action"]["sections"][0]["title"] = "s" * 24
    SendRequest.model_validate(request(ok))
    bad = list_message([1])
    bad["interactive"]["action"]["button"] = "b" * 21
    bad["interactive"]["action"]["sections"][0]["title"] = "s" * 25
    assert sorted(rejected(request(bad))) == [
        ("message.interactive.action.button", "string_too_long"),
        ("message.interactive.action.sections[0].title", "string_too_long"),
    ]


def test_list_row_id_limit_is_200() -> None:
    ok = list_message([1])
    ok["interactive"]["action"]["sections"][0]["rows"][0]["id"] = "i" * 200
    SendRequest.model_validate(request(ok))
    ok["interactive"]["action"]["sections"][0]["rows"][0]["id"] = "i" * 201
    assert rejected(request(ok)) == [("message.interactive.action.sections[0].rows[0].id", "string_too_long")]


def test_list_header_must_be_text() -> None:
    bad = list_message([1])
    bad["interactive"]["header"] = {"type": "image", "image": {"id": "1"}}
    assert rejected(request(bad))[0][0] == "message.interactive.header.type"


# --- media ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["image", "video", "document"])
def test_captioned_media_caption_limit_is_1024(kind: str) -> None:
    SendRequest.model_validate(request({"type": kind, kind: {"id": "123", "caption": "c" * 1024}}))
    assert rejected(request({"type": kind, kind: {"id": "123", "caption": "c" * 1025}})) == [
        (f"message.{kind}.caption", "string_too_long")
    ]


@pytest.mark.parametrize("kind", ["image", "video", "document", "audio", "sticker"])
def test_media_needs_exactly_one_of_id_or_link(kind: str) -> None:
    SendRequest.model_validate(request({"type": kind, kind: {"id": "123"}}))
    SendRequest.model_validate(request({"type": kind, kind: {"link": "https://example.com/f"}}))
    assert rejected(request({"type": kind, kind: {}})) == [(f"message.{kind}", "value_error")]
    assert rejected(request({"type": kind, kind: {"id": "1", "link": "https://example.com/f"}})) == [
        (f"message.{kind}", "value_error")
    ]


def test_audio_takes_no_caption_and_links_must_be_http() -> None:
    assert rejected(request({"type": "audio", "audio": {"id": "1", "caption": "no"}})) == [
        ("message.audio.caption", "extra_forbidden")
    ]
    assert rejected(request({"type": "image", "image": {"link": "ftp://example.com/a"}})) == [
        ("message.image.link", "string_pattern_mismatch")
    ]


def test_document_filename() -> None:
    msg = SendRequest.model_validate(request({"type": "document", "document": {"id": "1", "filename": "a.pdf"}}))
    assert msg.message.type == "document"


# --- location, reaction, template -------------------------------------------------------------------


@given(st.floats(min_value=-90, max_value=90), st.floats(min_value=-180, max_value=180))
def test_location_in_range_is_accepted(lat: float, lon: float) -> None:
    SendRequest.model_validate(request({"type": "location", "location": {"latitude": lat, "longitude": lon}}))


@pytest.mark.parametrize(("lat", "lon", "field"), [(90.0001, 0, "latitude"), (0, -180.0001, "longitude")])
def test_location_out_of_range_is_rejected(lat: float, lon: float, field: str) -> None:
    errors = rejected(request({"type": "location", "location": {"latitude": lat, "longitude": lon}}))
    assert errors[0][0] == f"message.location.{field}"


def test_reaction_with_empty_emoji_removes_it() -> None:
    SendRequest.model_validate(request({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": ""}}))
    SendRequest.model_validate(request({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}}))
    assert rejected(request({"type": "reaction", "reaction": {"emoji": "👍"}})) == [
        ("message.reaction.message_id", "missing")
    ]


def test_reaction_emoji_is_at_most_the_longest_standard_emoji() -> None:
    kiss = "\U0001F469\U0001F3FD\u200D\u2764\uFE0F\u200D\U0001F48B\u200D\U0001F468\U0001F3FF"  # 10 code points
    SendRequest.model_validate(request({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": kiss}}))
    assert rejected(request({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": kiss + "!"}})) == [
        ("message.reaction.emoji", "string_too_long")
    ]


def test_list_body_takes_4096_characters_where_buttons_take_1024() -> None:
    listing = list_message([1])
    listing["interactive"]["body"] = {"text": "b" * 4096}
    SendRequest.model_validate(request(listing))
    listing["interactive"]["body"] = {"text": "b" * 4097}
    assert rejected(request(listing)) == [("message.interactive.body.text", "string_too_long")]


def template(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": 0,
                "parameters": [{"type": "payload", "payload": "p"}],
            },
        ],
    }
    body.update(overrides)
    return {"type": "template", "template": body}


def test_template_accepted_and_validated() -> None:
    SendRequest.model_validate(request(template()))
    assert rejected(request(template(name="Bad Name"))) == [("message.template.name", "string_pattern_mismatch")]
    assert rejected(request(template(language={"code": "english"}))) == [
        ("message.template.language.code", "string_pattern_mismatch")
    ]
    errors = rejected(request(template(components=[{"type": "body", "parameters": [{"type": "text"}]}])))
    assert errors == [("message.template.components[0].parameters[0]", "value_error")]
    errors = rejected(request(template(components=[{"type": "button", "parameters": []}])))
    assert errors == [("message.template.components[0]", "value_error")]


def test_unknown_type_names_the_allowed_ones() -> None:
    data = request({"type": "poll", "poll": {}})
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    [error] = field_errors(info.value, data)
    assert error.field == "message"
    assert "'text'" in error.message
    assert "'template'" in error.message
