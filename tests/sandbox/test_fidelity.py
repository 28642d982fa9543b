"""The sandbox answers like Meta where PyWa found it did not (issue 21, fixes 1 to 6), each with its source.

Sources (Meta's developer documentation, read through the copies the search tool holds):
- BSUID: "Business-scoped user IDs", developers.facebook.com/documentation/business-messaging/whatsapp/
  business-scoped-user-ids (copy: support.chatarchitect.com/books/meta-whatsapp/page/business-scoped-user-
  ids-developer-documentation): `user_id` in every messages webhook; `recipient` on sends, `to` wins when
  both are given; `contacts[].user_id` (no wa_id) in the answer to a BSUID send; 131062 for
  authentication templates to a BSUID (dualhook.com/docs/contacts-bsuid-api-changes summarises the same).
- Send answer: `messages[].message_status: "accepted"` on template sends (Cloud API messages reference;
  this repository's docs/whatsapp.md records it).
- Unknown paths: Graph answers JSON errors, code 2500 "Unknown path components", never a text page.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from pipeline.sandbox import ids
from pipeline.sandbox.errors import NOT_EMULATED
from pipeline.sandbox.testing import running_sandbox
from tests.sandbox.conftest import NUMBER, USER, Graph, WebhookReceiver, text_body

FAST = {"sent_after_seconds": 0, "delivered_after_seconds": 0.02, "read_after_seconds": 0.04,
        "failed_after_seconds": 0.01, "read_probability": 1.0, "webhook_batch_max": 1}


@pytest.fixture
async def hooked(receiver: WebhookReceiver, http: aiohttp.ClientSession) -> Any:
    async with running_sandbox(webhook_url=receiver.url, phone_number_ids=[NUMBER], **FAST) as sandbox:
        yield Graph(sandbox, http)


def values(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    return [post.json()["entry"][0]["changes"][0]["value"] for post in receiver.posts]


# --- 1. BSUIDs in webhooks ----------------------------------------------------------------------------------


async def test_statuses_name_the_recipient_by_bsuid_and_contacts_except_on_failed(
    hooked: Graph, receiver: WebhookReceiver
) -> None:
    waba = hooked.sandbox.settings.waba_id
    assert (await hooked.send(text_body()))[0] == 200
    assert (await hooked.send(text_body(to="16505559999")))[0] == 200  # undeliverable: one failed status
    await hooked.sandbox.control.wait_webhooks_idle()
    by_kind = {v["statuses"][0]["status"]: v for v in values(receiver)}
    assert set(by_kind) == {"sent", "delivered", "read", "failed"}
    for kind in ("sent", "delivered", "read"):
        status = by_kind[kind]["statuses"][0]
        assert status["recipient_user_id"] == ids.bsuid(waba, USER)
        assert by_kind[kind]["contacts"] == [{"user_id": ids.bsuid(waba, USER), "wa_id": USER}]
    assert "contacts" not in by_kind["failed"]
    assert by_kind["failed"]["statuses"][0]["recipient_user_id"] == ids.bsuid(waba, "16505559999")


async def test_inbound_messages_carry_the_bsuid_and_a_hidden_number_only_the_bsuid(
    hooked: Graph, receiver: WebhookReceiver
) -> None:
    control = hooked.sandbox.control
    await control.inbound_text(USER, "hi", NUMBER, name="Ana")
    await control.inbound_text("16505550042", "no number", NUMBER, name="Bo", hide_number=True)
    await control.wait_webhooks_idle()
    shown, hidden = values(receiver)
    bsuid = ids.bsuid(hooked.sandbox.settings.waba_id, USER)
    assert shown["contacts"] == [{"profile": {"name": "Ana"}, "wa_id": USER, "user_id": bsuid}]
    assert (shown["messages"][0]["from"], shown["messages"][0]["from_user_id"]) == (USER, bsuid)
    assert "wa_id" not in hidden["contacts"][0]
    assert "from" not in hidden["messages"][0]
    assert hidden["messages"][0]["from_user_id"] == hidden["contacts"][0]["user_id"]


def test_bsuids_are_stable_per_business_and_look_like_metas() -> None:
    assert ids.bsuid("1", USER) == ids.bsuid("1", USER) != ids.bsuid("2", USER)
    country, digits = ids.bsuid("1", USER).split(".")
    assert (country, len(digits), digits.isdigit()) == ("US", 20, True)
    assert ids.bsuid("1", "351912345678").startswith("PT.")


# --- BSUID sends ----------------------------------------------------------------------------------------------


async def test_a_message_addressed_by_bsuid_is_accepted_and_answered_with_the_bsuid(
    hooked: Graph, receiver: WebhookReceiver
) -> None:
    bsuid = ids.bsuid(hooked.sandbox.settings.waba_id, "16505559999")
    await hooked.sandbox.control.inbound_text("16505559999", "hi", NUMBER)  # the sandbox now knows this user
    body = {"messaging_product": "whatsapp", "recipient": bsuid, "type": "text", "text": {"body": "hello"}}
    status, answer = await hooked.send(body)
    assert status == 200
    assert answer["contacts"] == [{"input": bsuid, "user_id": bsuid}]
    await hooked.sandbox.control.wait_webhooks_idle()
    # A known user's number picks the test scenario: …9999 is undeliverable, by BSUID too.
    [failed] = [v["statuses"][0] for v in values(receiver) if "statuses" in v]
    assert (failed["status"], failed["recipient_user_id"]) == ("failed", bsuid)


async def test_to_wins_over_recipient_and_a_bad_bsuid_is_refused(graph: Graph) -> None:
    both = {**text_body(), "recipient": "US.13491208655302741918"}
    status, answer = await graph.send(both)
    assert (status, answer["contacts"][0]) == (200, {"input": USER, "wa_id": USER})
    status, answer = await graph.send({"messaging_product": "whatsapp", "recipient": "not-a-bsuid",
                                       "type": "text", "text": {"body": "x"}})
    assert (status, answer["error"]["code"]) == (400, 100)
    assert "recipient" in answer["error"]["error_data"]["details"]


async def test_authentication_templates_cannot_go_to_a_bsuid(graph: Graph) -> None:
    body = {"messaging_product": "whatsapp", "recipient": "US.13491208655302741918", "type": "template",
            "template": {"name": "authentication_code", "language": {"code": "en_US"}}}
    status, answer = await graph.send(body)
    assert (status, answer["error"]["code"]) == (400, 131062)


# --- 2. template enums are case-insensitive ---------------------------------------------------------------


async def test_template_component_types_are_read_whatever_their_case(graph: Graph) -> None:
    # PyWa (used against Meta in production) sends "BODY", "HEADER", "QUICK_REPLY", "URL", "COPY_CODE";
    # Meta's own template definitions write components upper case (AWS End User Messaging's guide to
    # Meta's template API: docs.aws.amazon.com/social-messaging/latest/userguide/create-message-templates-api.html).
    components = [
        {"type": "HEADER", "parameters": [{"type": "TEXT", "text": "Ana"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "#1"}]},
        {"type": "BUTTON", "sub_type": "QUICK_REPLY", "index": 0, "parameters": [{"type": "PAYLOAD", "payload": "x"}]},
        {"type": "Button", "sub_type": "Url", "index": 1, "parameters": [{"type": "text", "text": "t/1"}]},
        {"type": "BUTTON", "sub_type": "COPY_CODE", "index": 2, "parameters": [{"type": "COUPON_CODE",
                                                                                "coupon_code": "25OFF"}]},
    ]
    body = {"messaging_product": "whatsapp", "to": USER, "type": "template",
            "template": {"name": "order_update", "language": {"code": "en_US"}, "components": components}}
    status, answer = await graph.send(body)
    assert status == 200, answer
    assert answer["messages"][0]["message_status"] == "accepted"  # fix 6: template answers say accepted
    components[0]["type"] = "HEADLINE"
    status, answer = await graph.send(body)
    assert (status, answer["error"]["code"]) == (400, 131009)


# --- 4. unknown paths answer in Graph's shape --------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", "/v23.0/106540352242922/no_such_edge"),
                                              ("PUT", "/v23.0/106540352242922/messages"),
                                              ("GET", "/nothing/here/at/all")])
async def test_unrouted_paths_answer_graphs_json_error(graph: Graph, method: str, path: str) -> None:
    async with graph.http.request(method, graph.sandbox.base_url + path, headers=graph.headers) as response:
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
    assert (response.status, error["code"], error["type"]) == (400, 2500, "OAuthException")
    assert path in error["error_data"]["details"]


async def test_the_business_profile_is_served(graph: Graph) -> None:
    url = f"{graph.sandbox.base_url}/v23.0/{NUMBER}/whatsapp_business_profile"
    async with graph.http.get(url, params={"fields": "about,email"}, headers=graph.headers) as response:
        assert response.status == 200
        [profile] = (await response.json())["data"]
    assert set(profile) == {"about", "email", "messaging_product"}


# --- 5. documented kinds: emulated, or an explicit "not emulated" ------------------------------------------


async def test_cta_url_location_request_and_contacts_are_emulated_and_checked(graph: Graph) -> None:
    def interactive(payload: dict[str, Any]) -> dict[str, Any]:
        return {"messaging_product": "whatsapp", "to": USER, "type": "interactive", "interactive": payload}

    cta = {"type": "cta_url", "body": {"text": "See it"},
           "action": {"name": "cta_url", "parameters": {"display_text": "Open", "url": "https://example.com"}}}
    where = {"type": "location_request_message", "body": {"text": "Where?"}, "action": {"name": "send_location"}}
    contacts = {"messaging_product": "whatsapp", "to": USER, "type": "contacts",
                "contacts": [{"name": {"formatted_name": "Ana Souza"}, "phones": [{"phone": "+16505551234"}]}]}
    for body in (interactive(cta), interactive(where), contacts):
        status, answer = await graph.send(body)
        assert status == 200, answer
    cta["action"]["parameters"]["display_text"] = "x" * 21  # type: ignore[index]
    status, answer = await graph.send(interactive(cta))
    assert (status, answer["error"]["code"]) == (400, 131009)
    assert "display_text" in answer["error"]["error_data"]["details"]
    status, answer = await graph.send({**contacts, "contacts": [{"phones": []}]})
    assert (status, answer["error"]["code"]) == (400, 131008)


@pytest.mark.parametrize("kind", ["product", "product_list", "catalog_message", "flow", "voice_call"])
async def test_kinds_not_emulated_get_an_explicit_answer_not_a_bad_payload_code(graph: Graph, kind: str) -> None:
    body = {"messaging_product": "whatsapp", "to": USER, "type": "interactive",
            "interactive": {"type": kind, "body": {"text": "x"}, "action": {}}}
    status, answer = await graph.send(body)
    assert (status, answer["error"]["code"], answer["error"]["type"]) == (501, NOT_EMULATED, "SandboxNotEmulated")
    assert kind in answer["error"]["error_data"]["details"]


# --- 6. minor ----------------------------------------------------------------------------------------------


async def test_fields_choose_what_the_phone_number_lookup_answers(graph: Graph) -> None:
    url = f"{graph.sandbox.base_url}/v23.0/{NUMBER}"
    async with graph.http.get(url, params={"fields": "quality_rating,throughput"}, headers=graph.headers) as r:
        number = await r.json()
    assert set(number) == {"id", "quality_rating", "throughput"}


async def test_inbound_replies_need_the_message_they_answer(hooked: Graph) -> None:
    async with hooked.http.post(f"{hooked.sandbox.base_url}/_sandbox/inbound", json={
        "from": USER, "button_reply": {"id": "a", "title": "A"}, "phone_number_id": NUMBER,
    }) as response:
        assert response.status == 400
        assert "context_message_id" in (await response.json())["error"]


async def test_an_expired_media_url_is_refused(graph: Graph) -> None:
    form = aiohttp.FormData()
    form.add_field("messaging_product", "whatsapp")
    form.add_field("type", "image/png")
    form.add_field("file", b"\x89PNG....", filename="a.png", content_type="image/png")
    async with graph.http.post(f"{graph.sandbox.base_url}/v23.0/{NUMBER}/media", data=form,
                               headers=graph.headers) as r:
        media_id = (await r.json())["id"]
    url = f"{graph.sandbox.base_url}/whatsapp_business/attachments/?mid={media_id}&expires=1"
    async with graph.http.get(url, headers=graph.headers) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == 100
