"""WhatsAppClient over httpx.MockTransport: what goes on the wire, what comes back, what never leaks."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pipeline.contracts import ErrorClass
from pipeline.observability.redaction import wamid_ref
from pipeline.whatsapp import GraphApiError, MessageSender, SentMessage, WhatsAppClient
from tests.whatsapp.conftest import BODIES, NUMBER, TOKEN, request, wa_settings

Handler = Callable[[httpx.Request], httpx.Response]


def ok(request: httpx.Request) -> httpx.Response:
    body = orjson.loads(request.content)
    return httpx.Response(200, json={"messaging_product": "whatsapp",
                                     "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                                     "messages": [{"id": f"wamid.{body['to']}"}]})


def meta_error(code: int, status: int = 400) -> Handler:
    return lambda _: httpx.Response(status, json={"error": {"message": f"(#{code}) x", "type": "OAuthException",
                                                            "code": code, "fbtrace_id": "Atrace"}})


class Recorder:
    """A MockTransport handler that records requests and answers with `handler`."""

    def __init__(self, handler: Handler = ok) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def json(self, index: int = -1) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.requests[index].content)
        return parsed


def client_with(handler: Handler, **kwargs: Any) -> WhatsAppClient:
    return WhatsAppClient(wa_settings(), transport=httpx.MockTransport(handler), **kwargs)


# --- sending --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BODIES))
async def test_send_every_type(kind: str) -> None:
    recorder = Recorder()
    async with client_with(recorder) as client:
        sent = await client.send_message(request(kind), phone_number_id=NUMBER, callback_data="req_1|00-abc")

    assert sent == SentMessage(wamid="wamid.16505551234", wa_id="16505551234", http_status=200)
    wire = recorder.requests[0]
    assert wire.method == "POST"
    assert str(wire.url) == f"https://graph.example.test/v23.0/{NUMBER}/messages"
    assert wire.headers["authorization"] == f"Bearer {TOKEN}"
    assert wire.headers["content-type"] == "application/json"
    body = recorder.json()
    assert body["type"] == BODIES[kind]["type"]
    assert body["to"] == "16505551234"
    assert body["biz_opaque_callback_data"] == "req_1|00-abc"


async def test_number_comes_from_argument_then_request_then_settings() -> None:
    recorder = Recorder()
    async with client_with(recorder) as client:
        await client.send_message(request(phone_number_id="111111"), phone_number_id="222222")
        await client.send_message(request(phone_number_id="111111"))
        await client.send_message(request())

    assert [r.url.path for r in recorder.requests] == [
        "/v23.0/222222/messages", "/v23.0/111111/messages", f"/v23.0/{NUMBER}/messages"]


async def test_a_missing_or_malformed_number_names_the_field() -> None:
    client = WhatsAppClient(wa_settings(phone_number_id=None), transport=httpx.MockTransport(ok))
    with pytest.raises(ValueError, match="phone_number_id: required"):
        await client.send_message(request())
    with pytest.raises(ValueError, match=r"phone_number_id: must be 5 to 20 digits; got '\.\./me'"):
        await client.send_message(request(), phone_number_id="../me")


def test_meta_without_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="access_token: WHATSAPP_ACCESS_TOKEN is required"):
        WhatsAppClient(wa_settings("https://graph.facebook.com", access_token=None))


async def test_sandbox_default_token_is_sent() -> None:
    recorder = Recorder()
    async with WhatsAppClient(wa_settings("http://127.0.0.1:8090", access_token=None),
                              transport=httpx.MockTransport(recorder)) as client:
        await client.send_message(request())
    assert recorder.requests[0].headers["authorization"] == "Bearer sandbox-token"


@pytest.mark.parametrize(
    ("handler", "code", "error_class", "status"),
    [
        (meta_error(131026), 131026, ErrorClass.UNDELIVERABLE, 400),
        (meta_error(130429, 429), 130429, ErrorClass.THROTTLED, 429),
        (meta_error(190, 401), 190, ErrorClass.AUTH, 401),
        (meta_error(424242), 424242, ErrorClass.OTHER, 400),
        (lambda _: httpx.Response(502, text="<html>Bad Gateway</html>"), None, ErrorClass.TRANSIENT, 502),
    ],
)
async def test_http_errors_raise_graph_api_errors(handler: Handler, code: int | None, error_class: ErrorClass,
                                                  status: int) -> None:
    async with client_with(handler) as client:
        with pytest.raises(GraphApiError) as info:
            await client.send_message(request())
    assert info.value.code == code
    assert info.value.error_class is error_class
    assert info.value.http_status == status
    assert info.value.ambiguous is False


@pytest.mark.parametrize(
    ("body", "ambiguous_reason"),
    [
        (b'{"messaging_product": "whatsapp", "messages": []}', r"without messages\[0\]\.id"),
        (b"<html>ok</html>", "not a JSON object"),
    ],
)
async def test_a_200_without_a_wamid_is_ambiguous(body: bytes, ambiguous_reason: str) -> None:
    async with client_with(lambda _: httpx.Response(200, content=body)) as client:
        with pytest.raises(GraphApiError, match=ambiguous_reason) as info:
            await client.send_message(request())
    assert info.value.ambiguous is True
    assert info.value.error_class is ErrorClass.TRANSIENT


@pytest.mark.parametrize(
    ("exc", "ambiguous"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow handshake"), False),
        (httpx.PoolTimeout("pool full"), False),
        (httpx.ReadTimeout("no answer"), True),
        (httpx.RemoteProtocolError("Server disconnected"), True),
        (httpx.ReadError("reset"), True),
    ],
)
async def test_timeouts_after_the_request_left_are_ambiguous(exc: httpx.RequestError, ambiguous: bool) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    async with client_with(fail) as client:
        with pytest.raises(GraphApiError) as info:
            await client.send_message(request())
    assert info.value.ambiguous is ambiguous
    assert info.value.error_class is ErrorClass.TRANSIENT
    assert info.value.__cause__ is exc


async def test_timeout_from_settings_reaches_the_transport() -> None:
    recorder = Recorder()
    client = WhatsAppClient(wa_settings(timeout_seconds=2.5), transport=httpx.MockTransport(recorder))
    await client.send_message(request())
    assert recorder.requests[0].extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}


def test_the_client_satisfies_the_sender_protocol() -> None:
    sender: MessageSender = client_with(ok)
    assert callable(sender.send_message)


# --- health ---------------------------------------------------------------------------------------


async def test_check_health_gets_the_number_object() -> None:
    recorder = Recorder(lambda r: httpx.Response(200, json={"id": NUMBER, "verified_name": "Shop"}))
    async with client_with(recorder) as client:
        assert (await client.check_health())["verified_name"] == "Shop"
    assert recorder.requests[0].method == "GET"
    assert recorder.requests[0].url.path == f"/v23.0/{NUMBER}"

    async with client_with(meta_error(190, 401)) as client:
        with pytest.raises(GraphApiError) as info:
            await client.check_health(NUMBER)
    assert info.value.error_class is ErrorClass.AUTH


# --- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [TOKEN, "opaque-system-user-token-4711"])
async def test_token_never_appears_in_reprs_errors_logs_or_spans(caplog: pytest.LogCaptureFixture,
                                                                 token: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    caplog.set_level(logging.DEBUG)

    def echo_token(request: httpx.Request) -> httpx.Response:
        # A hostile or buggy upstream that echoes the Authorization header, and the bare token, in its error.
        bare = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(401, json={"error": {"code": 190, "message": request.headers["authorization"],
                                                   "error_data": {"details": bare}}})

    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError(f"reset while sending {request.headers}")

    texts: list[str] = []
    for handler in (echo_token, reset):
        client = WhatsAppClient(wa_settings(access_token=token), transport=httpx.MockTransport(handler),
                                tracer_provider=provider)
        texts += [repr(client), str(client)]
        with pytest.raises(GraphApiError) as info:
            await client.send_message(request())
        err = info.value
        texts += [str(err), repr(err), "".join(traceback.format_exception(err)), err.to_error_info().model_dump_json()]
    texts += [str(span.attributes) + str(span.status.description) + span.name for span in exporter.get_finished_spans()]
    texts.append(caplog.text)

    secret = token.removeprefix("EAAG")
    assert [t for t in texts if secret in t] == []


async def test_client_span_carries_the_outcome_and_its_traceparent_goes_on_the_wire() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder = Recorder()
    async with client_with(recorder, tracer_provider=provider) as client:
        sent = await client.send_message(request())
        recorder.handler = meta_error(131047)
        with pytest.raises(GraphApiError):
            await client.send_message(request())

    ok_span, failed_span = exporter.get_finished_spans()
    assert ok_span.name == "POST /{phone_number_id}/messages"
    assert ok_span.kind.name == "CLIENT"
    assert ok_span.attributes is not None
    assert ok_span.attributes["url.full"] == f"https://graph.example.test/v23.0/{NUMBER}/messages"
    assert ok_span.attributes["http.response.status_code"] == 200
    assert ok_span.attributes["whatsapp.wamid_ref"] == wamid_ref(sent.wamid)  # issue 13, finding 8
    assert sent.wamid not in str(dict(ok_span.attributes))
    context = ok_span.get_span_context()
    assert context is not None
    assert recorder.requests[0].headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}")

    assert failed_span.status.status_code is StatusCode.ERROR
    assert failed_span.attributes is not None
    assert failed_span.attributes["whatsapp.error.code"] == 131047
    assert failed_span.attributes["whatsapp.error.class"] == "window"
    assert failed_span.attributes["error.type"] == "131047"
    assert failed_span.attributes["whatsapp.error.ambiguous"] is False
    assert failed_span.attributes["whatsapp.fbtrace_id"] == "Atrace"


async def test_a_redirect_is_an_error_not_a_success() -> None:
    moved = Recorder(lambda _: httpx.Response(301, headers={"location": "https://elsewhere.test/"}))
    async with client_with(moved) as client:
        with pytest.raises(GraphApiError) as info:
            await client.send_message(request())
    assert info.value.http_status == 301
    assert info.value.error_class is ErrorClass.OTHER
    assert info.value.ambiguous is False
    assert len(moved.requests) == 1  # not followed
