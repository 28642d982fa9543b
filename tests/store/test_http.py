"""The read API on both engines: shapes of docs/store.md, 404 across tenants, 422 naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from pipeline.auth import ApiKeys
from pipeline.config import ApiKey
from pipeline.store.backend import ALL, Backend
from pipeline.store.crypto import Sealer
from pipeline.store.http import Reader, create_app
from pipeline.store.projection import project
from pipeline.store.telemetry import StoreTelemetry
from tests.store.records import CONTACT, NUMBER_A, NUMBER_B, at, delivered_chain, inbound, result, status

ALL_KEY, A_KEY = "all-numbers-key", "only-number-a-key"
KEYS = ApiKeys([ApiKey(key=SecretStr(ALL_KEY), phone_number_ids=frozenset(["*"])),
                ApiKey(key=SecretStr(A_KEY), phone_number_ids=frozenset([NUMBER_A]))])
WINDOW = {"since": "2026-11-30T00:00:00Z", "until": "2026-12-02T00:00:00Z"}


async def _ready() -> list[str]:
    return []


@pytest.fixture
async def client(backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Reader(backend, Sealer(None)), KEYS, StoreTelemetry(), _ready)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://store") as http:
        yield http


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _load(backend: Backend) -> None:
    records = [*delivered_chain("req_a1", "wamid.A1", accepted=at(0)),
               inbound("wamid.in.A", at(60), reply_to="wamid.A1"),
               *delivered_chain("req_a2", "wamid.A2", accepted=at(100), upto="delivered"),
               *delivered_chain("req_b1", "wamid.B1", number=NUMBER_B, accepted=at(200)),
               inbound("wamid.in.B", at(260), number=NUMBER_B)]
    records.append(result("req_a3", None, outcome="failed", accepted=at(300), error={
        "code": 131026, "title": "Message undeliverable", "error_class": "undeliverable"}))
    changes, _ = project(records)
    await backend.apply(changes)


async def test_a_message_answers_in_the_documented_shape(backend: Backend, client: httpx.AsyncClient) -> None:
    await _load(backend)
    response = await client.get("/v1/messages/req_a1", headers=_auth(A_KEY))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"request_id", "phone_number_id", "to", "wa_id", "type", "text", "metadata", "accepted_at",
                         "outcome", "wamid", "status", "error", "timeline", "trace_id"}
    assert (body["to"], body["wa_id"], body["status"], body["outcome"]) == (f"+{CONTACT}", CONTACT, "read", "sent")
    assert [(s["status"], s["at"]) for s in body["timeline"]] == [
        ("accepted", "2026-12-01T10:00:00Z"), ("sent", "2026-12-01T10:00:01Z"), ("delivered", "2026-12-01T10:00:03Z"),
        ("read", "2026-12-01T10:00:05Z")]
    failed = (await client.get("/v1/messages/req_a3", headers=_auth(A_KEY))).json()
    assert failed["error"] == {"code": 131026, "title": "Message undeliverable", "class": "undeliverable",
                               "message": None}


async def test_a_key_gets_404_for_everything_of_another_number(backend: Backend, client: httpx.AsyncClient) -> None:
    await _load(backend)
    await backend.apply(project([status("wamid.B1", "read", at(205), request_id="req_b1", number=NUMBER_B)])[0])
    other_contact = "447700900123"
    changes, _ = project(delivered_chain("req_b2", "wamid.B2", number=NUMBER_B, to=other_contact))
    await backend.apply(changes)
    for path in ("/v1/messages/req_b1", f"/v1/contacts/{other_contact}/messages",
                 f"/v1/contacts/{other_contact}/analytics", f"/v1/analytics?phone_number_id={NUMBER_B}",
                 f"/v1/messages?phone_number_id={NUMBER_B}",
                 f"/v1/contacts/{CONTACT}/analytics?phone_number_id={NUMBER_B}"):
        response = await client.get(path, headers=_auth(A_KEY))
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
        assert (await client.get(path, headers=_auth(ALL_KEY))).status_code == 200, path
    conversation = (await client.get(f"/v1/contacts/{CONTACT}/messages", headers=_auth(A_KEY))).json()
    assert {m["phone_number_id"] for m in conversation["messages"]} == {NUMBER_A}
    found = (await client.get("/v1/messages?q=order", headers=_auth(A_KEY))).json()
    assert {m["phone_number_id"] for m in found["messages"]} == {NUMBER_A}
    assert (await client.delete(f"/v1/contacts/{other_contact}", headers=_auth(A_KEY))).json()["deleted"] == {
        "outbound": 0, "inbound": 0, "statuses": 0}
    assert (await client.get("/v1/messages/req_b2", headers=_auth(ALL_KEY))).status_code == 200


async def test_conversation_pages_through_the_cursor(backend: Backend, client: httpx.AsyncClient) -> None:
    await _load(backend)
    first = (await client.get(f"/v1/contacts/+{CONTACT}/messages?limit=2", headers=_auth(A_KEY))).json()
    assert [m["id"] for m in first["messages"]] == ["req_a3", "req_a2"]
    second = (await client.get(f"/v1/contacts/{CONTACT}/messages?limit=2&before={first['next_cursor']}",
                               headers=_auth(A_KEY))).json()
    assert [(m["direction"], m["id"]) for m in second["messages"]] == [
        ("inbound", "wamid.in.A"), ("outbound", "req_a1")]
    assert second["messages"][0]["reply_to"] == "wamid.A1"
    third = (await client.get(f"/v1/contacts/{CONTACT}/messages?limit=2&before={second['next_cursor']}",
                              headers=_auth(A_KEY))).json()
    assert third == {"wa_id": CONTACT, "messages": [], "next_cursor": None}


async def test_search_filters_and_pages(backend: Backend, client: httpx.AsyncClient) -> None:
    await _load(backend)
    read = (await client.get("/v1/messages?status=read&q=Order%2012345", headers=_auth(ALL_KEY))).json()
    assert [m["request_id"] for m in read["messages"]] == ["req_b1", "req_a1"]
    page = (await client.get(f"/v1/messages?to=%2B{CONTACT}&limit=1&phone_number_id={NUMBER_A}",
                             headers=_auth(A_KEY))).json()
    assert [m["request_id"] for m in page["messages"]] == ["req_a3"]
    rest = (await client.get(f"/v1/messages?to={CONTACT}&cursor={page['next_cursor']}", headers=_auth(A_KEY))).json()
    assert [m["request_id"] for m in rest["messages"]] == ["req_a2", "req_a1"]
    assert rest["next_cursor"] is None


async def test_analytics_counts_rates_medians_and_response_rate(backend: Backend, client: httpx.AsyncClient) -> None:
    await _load(backend)
    body = (await client.get("/v1/analytics", params={**WINDOW, "phone_number_id": NUMBER_A},
                             headers=_auth(A_KEY))).json()
    assert body["counts"] == {"accepted": 3, "sent": 2, "delivered": 2, "read": 1, "failed": 1}
    assert body["rates"]["read"] == round(1 / 3, 4)
    assert body["median_seconds"] == {"to_delivered": 3.0, "to_read": 5.0}
    assert body["response"] == {"window_hours": 24, "answered": 1, "rate": round(1 / 3, 4), "median_seconds": 60.0}
    assert body["top_errors"] == [{"code": 131026, "title": "Message undeliverable", "count": 1}]
    contact = (await client.get(f"/v1/contacts/{CONTACT}/analytics", params=WINDOW, headers=_auth(ALL_KEY))).json()
    assert contact["wa_id"] == CONTACT
    assert contact["counts"]["accepted"] == 4  # both numbers for a key that may read both


async def test_bad_parameters_are_named_with_their_rule(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/messages?limit=0&status=lost&since=yesterday&phone_number_id=x",
                                headers=_auth(ALL_KEY))
    assert response.status_code == 422
    fields = {(f["field"], f["rule"]) for f in response.json()["error"]["fields"]}
    assert fields == {("limit", "range"), ("status", "enum"), ("since", "datetime"), ("phone_number_id", "pattern")}
    assert (await client.get("/v1/contacts/abc/messages", headers=_auth(ALL_KEY))).status_code == 422
    assert (await client.get("/v1/messages?cursor=%%%", headers=_auth(ALL_KEY))).status_code == 422


async def test_no_key_is_401_before_anything_is_read(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/messages/req_a1")
    assert response.status_code == 401
    assert (await client.get("/v1/messages/req_a1", headers={"X-API-Key": "nope-nope-nope"})).status_code == 401


async def test_the_read_api_is_in_the_openapi_document_with_examples(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for path, method in (("/v1/messages/{request_id}", "get"), ("/v1/contacts/{wa_id}/messages", "get"),
                         ("/v1/messages", "get"), ("/v1/analytics", "get"), ("/v1/contacts/{wa_id}/analytics", "get"),
                         ("/v1/contacts/{wa_id}", "delete")):
        operation = doc["paths"][path][method]
        assert operation["responses"]["200"]["content"]["application/json"]["example"], path


async def test_encrypted_text_is_stored_sealed_and_read_back_open(backend: Backend) -> None:
    sealer = Sealer(bytes(range(32)))
    changes, _ = project(delivered_chain("req_enc", "wamid.enc"))
    await backend.apply(sealer.seal_changes(changes))
    found = await backend.message("req_enc", ALL)
    assert found is not None
    assert found[0].text is not None
    assert found[0].text.startswith("enc1:")
    assert "12345" not in found[0].text
    app = create_app(Reader(backend, sealer), KEYS, StoreTelemetry(), _ready)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://store") as http:
        body = (await http.get("/v1/messages/req_enc", headers=_auth(ALL_KEY))).json()
        assert body["text"] == "Your order 12345 shipped"
        refused = await http.get("/v1/messages?q=order", headers=_auth(ALL_KEY))
        assert refused.status_code == 422
        assert refused.json()["error"]["fields"][0]["rule"] == "encrypted"
