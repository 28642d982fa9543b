"""POST /{version}/{phone_number_id}/messages over real HTTP: Meta's success and error shapes, every rule."""

from __future__ import annotations

import base64
import copy
import gc
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.sandbox.app import create_app
from pipeline.sandbox.graph import STATE
from pipeline.sandbox.settings import SandboxSettings
from tests.sandbox.conftest import NUMBER, USER, Graph, text_body

WAMID = re.compile(r"^wamid\.[A-Za-z0-9+/=]+$")


async def test_accepted_text_answers_meta_success_shape(graph: Graph) -> None:
    status, body = await graph.send(text_body(to="+" + USER))
    assert status == 200
    assert set(body) == {"messaging_product", "contacts", "messages"}
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+" + USER, "wa_id": USER}]
    wamid = body["messages"][0]["id"]
    assert WAMID.match(wamid)
    # Like Meta's, the id embeds the recipient's wa_id.
    assert USER.encode() in base64.b64decode(wamid.removeprefix("wamid."))


async def test_wamids_are_unique(graph: Graph) -> None:
    ids = set()
    for i in range(50):
        status, body = await graph.send(text_body(to=f"1650555{i:04d}"))
        assert status == 200
        ids.add(body["messages"][0]["id"])
    assert len(ids) == 50


async def test_bad_or_missing_token_is_190_with_http_401(graph: Graph) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2FuZGJveC10b2tlbg=="}):
        status, body = await graph.send(text_body(), headers=headers)
        assert status == 401
        error = body["error"]
        assert error["code"] == 190
        assert error["type"] == "OAuthException"
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert error["fbtrace_id"]
    # Meta also takes the token as a query parameter.
    status, _ = await graph.send(text_body(), headers={}, params={"access_token": graph.sandbox.access_token})
    assert status == 200


async def test_configured_token_is_the_one_checked(http: Any) -> None:
    from pipeline.sandbox.testing import running_sandbox

    async with running_sandbox(access_token="another-token") as sandbox:
        graph = Graph(sandbox, http)
        assert (await graph.send(text_body()))[0] == 200
        graph.headers = {"Authorization": "Bearer sandbox-token"}
        assert (await graph.send(text_body()))[0] == 401


async def test_phone_number_details_for_a_health_check(graph: Graph) -> None:
    url = f"{graph.sandbox.base_url}/v23.0/{NUMBER}"
    async with graph.http.get(url, headers=graph.headers) as r:
        assert r.status == 200
        body = await r.json()
    assert body["id"] == NUMBER
    assert body["display_phone_number"].lstrip("+") == graph.sandbox.settings.display_phone_number
    assert {"verified_name", "quality_rating", "throughput"} <= set(body)
    async with graph.http.get(url) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == 190


async def test_unknown_number_and_bad_version(http: Any) -> None:
    from pipeline.sandbox.testing import running_sandbox

    async with running_sandbox(phone_number_ids=[NUMBER]) as sandbox:
        graph = Graph(sandbox, http)
        status, body = await graph.send(text_body(), number="999999999")
        assert (status, body["error"]["code"], body["error"]["error_subcode"]) == (400, 100, 33)
        async with http.post(f"{sandbox.base_url}/latest/{NUMBER}/messages", json=text_body(),
                             headers=graph.headers) as r:
            assert r.status == 400
            assert "version" in (await r.json())["error"]["error_data"]["details"]


def _button(title: str, button_id: str | None = None) -> dict[str, Any]:
    return {"type": "reply", "reply": {"id": button_id or title, "title": title}}


BUTTONS = {
    "messaging_product": "whatsapp", "to": USER, "type": "interactive",
    "interactive": {"type": "button", "body": {"text": "Pick one"},
                    "action": {"buttons": [_button("Yes"), _button("No")]}},
}
LIST = {
    "messaging_product": "whatsapp", "to": USER, "type": "interactive",
    "interactive": {
        "type": "list", "body": {"text": "Choose"},
        "action": {"button": "Options", "sections": [{"title": "S", "rows": [{"id": "r1", "title": "Row"}]}]},
    },
}
VALID: dict[str, dict[str, Any]] = {
    "text": text_body(),
    "text_at_limit": text_body(body="x" * 4096),
    "template": {"messaging_product": "whatsapp", "to": USER, "type": "template",
                 "template": {"name": "order_update", "language": {"code": "en_US"},
                              "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]}},
    "buttons": BUTTONS,
    "list": LIST,
    "image_link": {"messaging_product": "whatsapp", "to": USER, "type": "image",
                   "image": {"link": "https://example.com/a.jpg", "caption": "c" * 1024}},
    "document_link": {"messaging_product": "whatsapp", "to": USER, "type": "document",
                      "document": {"link": "https://example.com/a.pdf", "filename": "a.pdf"}},
    "location": {"messaging_product": "whatsapp", "to": USER, "type": "location",
                 "location": {"latitude": 38.7, "longitude": -9.1, "name": "Lisbon"}},
    "reaction": {"messaging_product": "whatsapp", "to": USER, "type": "reaction",
                 "reaction": {"message_id": "wamid.X", "emoji": "\U0001f44d"}},
    "reaction_removed": {"messaging_product": "whatsapp", "to": USER, "type": "reaction",
                         "reaction": {"message_id": "wamid.X", "emoji": ""}},
    "reply_context": {**text_body(), "context": {"message_id": "wamid.X"}},
}


@pytest.mark.parametrize("name", sorted(VALID))
async def test_valid_bodies_of_every_type_are_accepted(graph: Graph, name: str) -> None:
    status, body = await graph.send(VALID[name])
    assert status == 200, body


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with the dotted `path` set to `value` (None deletes it)."""
    body = copy.deepcopy(base)
    keys = path.split(".")
    target: Any = body
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last: Any = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return body


# (base, dotted path, new value or None to delete, expected code, words the details must contain)
INVALID: list[tuple[str, dict[str, Any], str, Any, int, str]] = [
    ("no_product", text_body(), "messaging_product", None, 100, "messaging_product"),
    ("wrong_product", text_body(), "messaging_product", "sms", 100, "messaging_product"),
    ("no_to", text_body(), "to", None, 100, "to"),
    ("letters_in_to", text_body(), "to", "1650555abcd", 100, "to"),
    ("unknown_type", text_body(), "type", "carrier_pigeon", 100, "type"),
    ("no_text_object", text_body(), "text", None, 131008, "text"),
    ("no_text_body", text_body(), "text.body", None, 131008, "text.body"),
    ("text_too_long", text_body(), "text.body", "x" * 4097, 131009, "text.body"),
    ("callback_too_long", text_body(), "biz_opaque_callback_data", "r" * 513, 131009, "biz_opaque_callback_data"),
    ("no_buttons", BUTTONS, "interactive.action.buttons", [], 131009, "buttons"),
    ("four_buttons", BUTTONS, "interactive.action.buttons",
     [_button("a"), _button("b"), _button("c"), _button("d")], 131009, "buttons"),
    ("button_title_21", BUTTONS, "interactive.action.buttons.0.reply.title", "t" * 21, 131009, "title"),
    ("duplicate_titles", BUTTONS, "interactive.action.buttons", [_button("Same", "a"), _button("Same", "b")],
     131009, "unique"),
    ("button_body_too_long", BUTTONS, "interactive.body.text", "b" * 1025, 131009, "body.text"),
    ("footer_too_long", BUTTONS, "interactive.footer", {"text": "f" * 61}, 131009, "footer"),
    ("header_too_long", BUTTONS, "interactive.header", {"type": "text", "text": "h" * 61}, 131009, "header"),
    ("list_button_too_long", LIST, "interactive.action.button", "b" * 21, 131009, "action.button"),
    ("row_title_25", LIST, "interactive.action.sections.0.rows.0.title", "r" * 25, 131009, "title"),
    ("row_description_73", LIST, "interactive.action.sections.0.rows.0.description", "d" * 73, 131009, "description"),
    ("eleven_rows", LIST, "interactive.action.sections.0.rows",
     [{"id": f"r{i}", "title": "t"} for i in range(11)], 131009, "rows"),
    ("eleven_rows_over_sections", LIST, "interactive.action.sections",
     [{"title": f"s{j}", "rows": [{"id": f"r{j}{i}", "title": "t"} for i in range(6)]} for j in range(2)],
     131009, "10 rows"),
    ("section_title_25", LIST, "interactive.action.sections.0.title", "s" * 25, 131009, "title"),
    ("caption_1025", VALID["image_link"], "image.caption", "c" * 1025, 131009, "caption"),
    ("media_without_id_or_link", VALID["image_link"], "image", {"caption": "x"}, 131008, "id or link"),
    ("media_link_not_http", VALID["image_link"], "image.link", "ftp://x/y.jpg", 131009, "link"),
    ("template_no_name", VALID["template"], "template.name", None, 131008, "template.name"),
    ("template_no_language", VALID["template"], "template.language", None, 131008, "template.language"),
    ("latitude_out_of_range", VALID["location"], "location.latitude", 91, 131009, "latitude"),
    ("no_longitude", VALID["location"], "location.longitude", None, 131008, "longitude"),
    ("reaction_no_message_id", VALID["reaction"], "reaction.message_id", None, 131008, "message_id"),
]


@pytest.mark.parametrize(("name", "base", "path", "value", "code", "words"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_bodies_get_metas_error_naming_the_field(
    graph: Graph, name: str, base: dict[str, Any], path: str, value: Any, code: int, words: str
) -> None:
    status, body = await graph.send(_with(base, path, value))
    assert status == 400, body
    error = body["error"]
    assert error["code"] == code
    assert error["type"] == "OAuthException"
    assert error["message"].startswith(f"(#{code})")
    assert words in error["error_data"]["details"]
    assert set(error) >= {"message", "type", "code", "error_data", "fbtrace_id"}


async def test_body_that_is_not_json_is_100(graph: Graph) -> None:
    async with graph.http.post(graph.sandbox.messages_url(NUMBER), data=b"{not json", headers=graph.headers) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == 100


async def test_sending_to_the_business_number_itself_is_131021(graph: Graph) -> None:
    status, body = await graph.send(text_body(to=graph.sandbox.settings.display_phone_number))
    assert (status, body["error"]["code"]) == (400, 131021)


@pytest.mark.parametrize(("name", "code"), [("sandbox_missing_thing", 132001), ("sandbox_paused_promo", 132015)])
async def test_template_test_names(graph: Graph, name: str, code: int) -> None:
    status, body = await graph.send(_with(VALID["template"], "template.name", name))
    assert (status, body["error"]["code"]) == (400, code)


async def test_rejected_sends_are_not_logged_and_accepted_ones_are_in_order(graph: Graph) -> None:
    await graph.send(text_body(request_id="a"))
    await graph.send(text_body(body="x" * 5000, request_id="bad"))
    await graph.send(text_body(to="16505550002", request_id="b"))
    await graph.send(text_body(request_id=None))
    sends = await graph.sandbox.control.sends()
    assert [(s["to"], s["request_id"]) for s in sends] == [(USER, "a"), ("16505550002", "b"), (USER, None)]
    assert [s["seq"] for s in sends] == [1, 2, 3]
    assert all(s["phone_number_id"] == NUMBER and s["at"] > 0 for s in sends)
    stats = await graph.sandbox.control.stats()
    assert stats["received"]["messages"] == {"accepted": 3, "invalid": 1}


async def test_marking_an_inbound_message_read(graph: Graph) -> None:
    body = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.INBOUND"}
    assert await graph.send(body) == (200, {"success": True})
    status, answer = await graph.send({**body, "message_id": None})
    assert (status, answer["error"]["code"]) == (400, 131008)
    assert await graph.sandbox.control.sends() == []  # not a message sent


async def test_the_send_log_is_left_out_of_garbage_collections() -> None:
    # A tracked log of 100,000 sends made each full collection pause the sandbox ~40 ms: requests
    # queued meanwhile were then counted in the same second, an overshoot the sender never made.
    settings = SandboxSettings(latency_median_seconds=0.0)
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        headers = {"Authorization": f"Bearer {settings.access_token.get_secret_value()}"}
        answer = await client.post(f"/v23.0/{NUMBER}/messages", json=text_body(), headers=headers)
        assert answer.status == 200
        gc.collect()
        state = app[STATE]
        assert len(state.sends) == 1
        assert not gc.is_tracked(state.sends[0])
        [logged] = (await (await client.get("/_sandbox/sends")).json())["sends"]
    assert (logged["request_id"], logged["phone_number_id"]) == ("req-1", NUMBER)
