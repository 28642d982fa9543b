"""The producer API over HTTP against the real broker: what a 202 puts on the topic, and every refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
from opentelemetry.trace import SpanKind

from pipeline.contracts import SendRequest
from tests.api.conftest import OTHER_NUMBER_ID, PHONE_NUMBER_ID, RunningApi, headers_of, read_topic, text_request


async def test_accepted_request_is_on_the_topic_with_key_headers_and_clean_value(api: RunningApi) -> None:
    response = await api.client.post(
        "/v1/messages",
        json=text_request(body="hi\x00 there\x1b", to="+1 (650) 555-1234", metadata={"order": "A-17"}),
        headers=api.auth,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["phone_number_id"] == PHONE_NUMBER_ID
    assert body["replayed"] is False

    [record] = await read_topic(api.service.settings, api.topics.send_requests, at_least=1)
    assert record.key == PHONE_NUMBER_ID.encode()
    headers = headers_of(record)
    assert headers["content-type"] == "application/json"
    assert headers["request-id"] == body["request_id"]
    assert headers["traceparent"].startswith("00-")
    request = SendRequest.model_validate_json(record.value)
    assert request.request_id == body["request_id"]
    assert request.to == "+16505551234"  # normalised to E.164
    assert request.message.text.body == "hi there"  # type: ignore[union-attr]  # control characters gone
    assert request.phone_number_id == PHONE_NUMBER_ID  # filled from WHATSAPP_PHONE_NUMBER_ID
    assert request.accepted_at is not None
    assert request.accepted_at.isoformat().startswith(body["accepted_at"][:19])
    assert request.metadata == {"order": "A-17"}


async def test_server_span_is_the_parent_of_the_produce_span_and_joins_the_callers_trace(api: RunningApi) -> None:
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    api.spans.clear()
    # aiohttp rather than the fixture's httpx client: httpx is instrumented in this process and would
    # replace the caller's traceparent with its own.
    async with aiohttp.ClientSession() as session, session.post(
        f"{api.base_url}/v1/messages",
        json=text_request(),
        headers={**api.auth, "traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"},
    ) as response:
        assert response.status == 202

    spans = {s.name: s for s in api.spans.get_finished_spans()}
    server = spans["POST /v1/messages"]
    produce = spans[f"send {api.topics.send_requests}"]
    assert server.kind is SpanKind.SERVER
    assert produce.kind is SpanKind.PRODUCER
    assert format(server.context.trace_id, "032x") == caller_trace
    assert produce.parent is not None
    assert produce.parent.span_id == server.context.span_id
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 202

    [record] = await read_topic(api.service.settings, api.topics.send_requests, at_least=1)
    _, trace_id, span_id, _ = headers_of(record)["traceparent"].split("-")
    assert (trace_id, span_id) == (caller_trace, format(produce.context.span_id, "016x"))


async def test_unauthenticated_and_unknown_keys_get_401(api: RunningApi) -> None:
    for headers in ({}, {"Authorization": "Bearer nope-nope-nope"}, {"X-API-Key": "wrong-key-123"},
                    {"Authorization": "Basic ZGV2LWtleQ=="}):
        response = await api.client.post("/v1/messages", json=text_request(), headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    with_header = await api.client.post("/v1/messages", json=text_request(), headers={"X-API-Key": "dev-key"})
    assert with_header.status_code == 202


async def test_key_not_allowed_for_the_business_number_gets_403(api: RunningApi) -> None:
    limited = {"X-API-Key": "only-one-number"}
    denied = await api.client.post("/v1/messages", json=text_request(phone_number_id=OTHER_NUMBER_ID), headers=limited)
    assert denied.status_code == 403
    assert OTHER_NUMBER_ID in denied.json()["error"]["message"]
    allowed = await api.client.post("/v1/messages", json=text_request(phone_number_id=PHONE_NUMBER_ID), headers=limited)
    assert allowed.status_code == 202
    records = await read_topic(api.service.settings, api.topics.send_requests, at_least=1)
    assert [r.key for r in records] == [PHONE_NUMBER_ID.encode()]


async def test_422_names_every_offending_field_with_rule_and_limit(api: RunningApi) -> None:
    bad = {
        "to": "12",
        "message": {"type": "text", "text": {"body": "x" * 4097}},
        "metadata": {"k": "casino"},  # forbidden patterns apply to message texts only
        "colour": "red",
    }
    response = await api.client.post("/v1/messages", json=bad, headers=api.auth)
    assert response.status_code == 422
    error = response.json()["error"]
    fields = {f["field"]: f for f in error["fields"]}
    assert set(fields) == {"to", "message.text.body", "colour"}
    assert fields["message.text.body"]["rule"] == "string_too_long"
    assert fields["message.text.body"]["limit"] == 4096
    assert fields["colour"]["rule"] == "extra_forbidden"
    assert "E.164" in fields["to"]["message"]
    assert await read_topic(api.service.settings, api.topics.send_requests) == []


async def test_forbidden_content_is_rejected_naming_the_field(api: RunningApi) -> None:
    request = {
        "to": "+16505551234",
        "message": {"type": "image", "image": {"link": "https://example.com/a.png", "caption": "Best CASINO in town"}},
    }
    response = await api.client.post("/v1/messages", json=request, headers=api.auth)
    assert response.status_code == 422
    [problem] = response.json()["error"]["fields"]
    assert (problem["field"], problem["rule"]) == ("message.image.caption", "forbidden_content")


async def test_oversized_and_malformed_bodies(api: RunningApi) -> None:
    big = await api.client.post("/v1/messages", json=text_request(body="x" * 9000), headers=api.auth)
    assert big.status_code == 413
    assert big.json()["error"]["fields"][0]["limit"] == 8192

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):  # 10 kB
            yield b"x" * 1000

    streamed = await api.client.post("/v1/messages", content=chunked(), headers=api.auth)
    assert streamed.status_code == 413  # no Content-Length to trust: counted while reading

    broken = await api.client.post("/v1/messages", content=b'{"to": ', headers=api.auth)
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_json"
    array = await api.client.post("/v1/messages", content=b"[1, 2]", headers=api.auth)
    assert array.status_code == 422
    assert array.json()["error"]["fields"][0]["field"] == "(body)"
    header = await api.client.post("/v1/messages", json=text_request(),
                                   headers={**api.auth, "Idempotency-Key": "has spaces"})
    assert header.status_code == 422
    assert header.json()["error"]["fields"][0]["field"] == "Idempotency-Key"


async def test_batch_accepts_valid_items_and_reports_each_rejected_one(api: RunningApi) -> None:
    items = [
        text_request(body="one"),
        text_request(to="not-a-number"),
        text_request(body="three", phone_number_id=OTHER_NUMBER_ID),
        text_request(body="four", to="+447700900123"),
    ]
    response = await api.client.post("/v1/messages:batch", json={"messages": items},
                                     headers={"X-API-Key": "only-one-number"})
    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    assert [r["status"] for r in body["results"]] == [202, 422, 403, 202]
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]
    assert body["results"][1]["error"]["fields"][0]["field"] == "to"

    records = await read_topic(api.service.settings, api.topics.send_requests, at_least=2)
    sent = {orjson.loads(r.value)["request_id"] for r in records}
    assert sent == {body["results"][0]["request_id"], body["results"][3]["request_id"]}


async def test_batch_envelope_limits(api: RunningApi) -> None:
    too_many = await api.client.post("/v1/messages:batch", json={"messages": [text_request()] * 6}, headers=api.auth)
    assert too_many.status_code == 422
    [problem] = too_many.json()["error"]["fields"]
    assert (problem["field"], problem["rule"], problem["limit"]) == ("messages", "too_long", 5)
    empty = await api.client.post("/v1/messages:batch", json={"messages": []}, headers=api.auth)
    assert empty.status_code == 422
    not_a_list = await api.client.post("/v1/messages:batch", json=[text_request()], headers=api.auth)
    assert not_a_list.status_code == 422
    all_bad = await api.client.post("/v1/messages:batch", json={"messages": [{"to": "1"}, {}]}, headers=api.auth)
    assert all_bad.status_code == 422
    assert all_bad.json()["rejected"] == 2
    assert await read_topic(api.service.settings, api.topics.send_requests) == []


async def test_metrics_health_and_docs(api: RunningApi) -> None:
    await api.client.post("/v1/messages", json=text_request(), headers=api.auth)
    await api.client.post("/v1/messages", json={"to": "1", "message": {"type": "carrier-pigeon"}}, headers=api.auth)
    metrics = (await api.client.get("/metrics")).text
    assert 'delivery_api_requests_total{message_type="text",outcome="accepted"}' in metrics
    assert 'delivery_api_requests_total{message_type="unknown",outcome="invalid"}' in metrics  # bounded label
    assert 'delivery_api_request_duration_seconds_count{route="/v1/messages"}' in metrics
    assert "+1650" not in metrics

    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"ready": True}
    document = (await api.client.get("/openapi.json")).json()
    assert {"/v1/messages", "/v1/messages:batch"} <= set(document["paths"])
    assert "SendRequest" in document["components"]["schemas"]
    assert "swagger" in (await api.client.get("/docs")).text.lower()
    asyncapi = (await api.client.get("/asyncapi.json")).json()
    assert api.topics.send_requests in asyncapi["channels"]
    assert (await api.client.get("/asyncapi")).status_code == 200
