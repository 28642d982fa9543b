"""The client against the sandbox over real HTTP: every message type, every error class the sandbox
produces, media ids the sandbox expired, timeouts and outages, the health check. The pipeline takes media
by id or link; `upload` here posts to the sandbox's media endpoint as a business's own uploader would.

One sandbox for the module (reset before each test); latency 0 unless a test sets it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from pipeline.contracts import CallbackData, ErrorClass, SendRequest
from pipeline.sandbox.testing import SandboxHandle, running_sandbox
from pipeline.whatsapp import GraphApiError, WhatsAppClient, classify
from pipeline.whatsapp.errors import error_from_response
from tests.whatsapp.conftest import BODIES, NUMBER, request, wa_settings

PNG = b"\x89PNG\r\n\x1a\n" + b"sandbox image" * 50


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SandboxHandle]:
    async with running_sandbox(hang_seconds=5.0) as handle:
        yield handle


@pytest.fixture
async def fresh(sandbox: SandboxHandle) -> SandboxHandle:
    await sandbox.control.reset()
    await sandbox.control.configure(rate_per_second=0)
    return sandbox


def client_for(sandbox: SandboxHandle, **settings: Any) -> WhatsAppClient:
    values = {"access_token": sandbox.access_token, **settings}
    return WhatsAppClient(wa_settings(sandbox.base_url, **values))


@pytest.fixture
async def client(fresh: SandboxHandle) -> AsyncIterator[WhatsAppClient]:
    async with client_for(fresh) as c:
        yield c


async def upload(sandbox: SandboxHandle, content: bytes = PNG, mime_type: str = "image/png") -> str:
    """The media id of `content`, uploaded as Meta documents it; the sandbox's refusal as a `GraphApiError`."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            sandbox.media_url(NUMBER), headers={"authorization": f"Bearer {sandbox.access_token}"},
            data={"messaging_product": "whatsapp", "type": mime_type}, files={"file": ("file", content, mime_type)},
        )
    if response.status_code != 200:
        raise error_from_response(response)
    media_id: str = response.json()["id"]
    return media_id


async def expect_error(client: WhatsAppClient, send: SendRequest, **kwargs: Any) -> GraphApiError:
    with pytest.raises(GraphApiError) as info:
        await client.send_message(send, **kwargs)
    return info.value


# --- every message type -----------------------------------------------------------------------------


async def test_every_message_type_is_accepted_with_callback_data(client: WhatsAppClient,
                                                                 fresh: SandboxHandle) -> None:
    media_id = await upload(fresh)
    bodies = dict(BODIES)
    for kind in ("video", "audio", "sticker"):  # ids the sandbox knows: our own upload
        bodies[kind] = {"type": kind, kind: {**bodies[kind][kind], "id": media_id}}
    callbacks: dict[str, str] = {}
    for kind, body in bodies.items():
        send = SendRequest.model_validate({"to": "+16505551234", "message": body})
        traceparent = f"00-{'a' * 31}{len(callbacks)}-{'b' * 16}-01"
        callbacks[kind] = CallbackData(request_id=send.request_id, traceparent=traceparent).encode()
        sent = await client.send_message(send, callback_data=callbacks[kind])
        assert sent.wamid.startswith("wamid.")
        assert sent.wa_id == "16505551234"
        assert sent.http_status == 200

    log = await fresh.control.sends()
    assert [entry["type"] for entry in log] == [body["type"] for body in bodies.values()]
    assert [entry["request_id"] for entry in log] == list(callbacks.values())


async def test_reply_context_and_a_plus_less_recipient(client: WhatsAppClient) -> None:
    first = await client.send_message(request())
    reply = await client.send_message(request(reply_to=first.wamid))
    assert reply.wamid != first.wamid


async def test_a_body_the_contracts_let_through_but_meta_refuses_is_invalid(client: WhatsAppClient) -> None:
    # A media id that was never uploaded: the contracts cannot know, Meta (and the sandbox) can.
    err = await expect_error(client, request("video"))
    assert err.code == 131009
    assert err.error_class is ErrorClass.INVALID
    assert err.details is not None
    assert "video.id" in err.details


# --- every error class the sandbox produces ---------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "code", "error_class", "status"),
    [
        ("+16505559000", 131000, ErrorClass.TRANSIENT, 500),
        ("+16505559503", 2, ErrorClass.TRANSIENT, 503),
        ("+16505559429", 130429, ErrorClass.THROTTLED, 400),
        ("+16505559056", 131056, ErrorClass.PAIR_LIMITED, 400),
        ("+16505559190", 190, ErrorClass.AUTH, 401),
        ("+16505559368", 368, ErrorClass.POLICY, 400),
        ("+16505559100", 100, ErrorClass.INVALID, 400),
        ("+15550783881", 131021, ErrorClass.INVALID, 400),  # the business's own number
    ],
)
async def test_test_recipients_produce_each_class(client: WhatsAppClient, to: str, code: int,
                                                  error_class: ErrorClass, status: int) -> None:
    err = await expect_error(client, request(to=to))
    assert (err.code, err.error_class, err.http_status, err.ambiguous) == (code, error_class, status, False)
    assert err.fbtrace_id
    assert err.to_error_info().error_class is error_class


@pytest.mark.parametrize(("template", "code"), [("sandbox_missing_x", 132001), ("sandbox_paused_x", 132015)])
async def test_template_errors(client: WhatsAppClient, template: str, code: int) -> None:
    send = SendRequest.model_validate({"to": "+16505551234", "message": {
        "type": "template", "template": {"name": template, "language": {"code": "en"}}}})
    err = await expect_error(client, send)
    assert err.code == code
    assert err.error_class is ErrorClass.TEMPLATE


async def test_throughput_cap_answers_throttled(client: WhatsAppClient, fresh: SandboxHandle) -> None:
    await fresh.control.set_rate(3)
    results = await asyncio.gather(*(client.send_message(request(to=f"+4420000000{i:02d}")) for i in range(6)),
                                   return_exceptions=True)
    throttled = [r for r in results if isinstance(r, GraphApiError)]
    assert len(throttled) == 3
    assert {(e.code, e.error_class) for e in throttled} == {(130429, ErrorClass.THROTTLED)}


async def test_pair_limit_answers_pair_limited_with_a_retry_hint(client: WhatsAppClient, fresh: SandboxHandle) -> None:
    await fresh.control.set_pair_limit(burst=1, interval_seconds=6)
    await client.send_message(request())
    err = await expect_error(client, request())
    assert err.error_class is ErrorClass.PAIR_LIMITED
    assert err.retry_after == 6.0
    await client.send_message(request(to="+16505550001"))  # other recipients are unaffected


async def test_bad_token_is_auth(fresh: SandboxHandle) -> None:
    async with client_for(fresh, access_token="not-the-token") as client:
        err = await expect_error(client, request())
        assert (err.code, err.error_class, err.http_status) == (190, ErrorClass.AUTH, 401)
        with pytest.raises(GraphApiError) as health:
            await client.check_health(NUMBER)
        assert health.value.error_class is ErrorClass.AUTH


async def test_failed_status_webhooks_carry_codes_the_same_table_classifies(fresh: SandboxHandle,
                                                                            client: WhatsAppClient) -> None:
    codes: list[int] = []

    async def receive(http: web.Request) -> web.Response:
        body = await http.json()
        for entry in body["entry"]:
            for change in entry["changes"]:
                for status in change["value"].get("statuses", []):
                    codes.extend(e["code"] for e in status.get("errors", []))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await fresh.control.configure(webhook_url=f"http://127.0.0.1:{port}/hook", failed_after_seconds=0)
        await client.send_message(request(to="+16505559999"))  # accepted, then failed 131026
        await client.send_message(request(to="+16505559047"))  # accepted, then failed 131047
        await fresh.control.wait_webhooks_idle()
    finally:
        await fresh.control.configure(webhook_url=None)
        await runner.cleanup()

    assert sorted(codes) == [131026, 131047]
    assert [classify(c) for c in sorted(codes)] == [ErrorClass.UNDELIVERABLE, ErrorClass.WINDOW]


# --- timeouts and outages ---------------------------------------------------------------------------


async def test_held_answer_times_out_ambiguously_and_the_send_did_happen(fresh: SandboxHandle) -> None:
    async with client_for(fresh, timeout_seconds=0.3) as client:
        err = await expect_error(client, request(to="+16505559030"))

    assert err.ambiguous is True
    assert err.error_class is ErrorClass.TRANSIENT
    assert [s["scenario"] for s in await fresh.control.sends()] == ["timeout"]  # it went out after all


async def test_outage_modes(client: WhatsAppClient, fresh: SandboxHandle) -> None:
    await fresh.control.outage("error")
    err = await expect_error(client, request())
    assert (err.code, err.error_class, err.http_status, err.ambiguous) == (2, ErrorClass.TRANSIENT, 503, False)

    await fresh.control.outage("disconnect")
    err = await expect_error(client, request())
    assert err.error_class is ErrorClass.TRANSIENT
    assert err.ambiguous is True  # the connection dropped after the request went out

    await fresh.control.end_outage()
    assert (await client.send_message(request())).wamid


async def test_timeout_outage_is_ambiguous(fresh: SandboxHandle) -> None:
    await fresh.control.outage("timeout")
    async with client_for(fresh, timeout_seconds=0.3) as client:
        err = await expect_error(client, request())
    await fresh.control.end_outage()
    assert err.ambiguous is True


async def test_slow_answer_within_the_timeout_succeeds(fresh: SandboxHandle) -> None:
    await fresh.control.configure(slow_seconds=0.3)
    async with client_for(fresh, timeout_seconds=2) as client:
        assert (await client.send_message(request(to="+16505559005"))).wamid


async def test_nothing_listening_is_not_ambiguous() -> None:
    async with running_sandbox() as gone:
        url = gone.base_url
    async with WhatsAppClient(wa_settings(url, access_token=gone.access_token)) as client:
        err = await expect_error(client, request())
    assert err.ambiguous is False
    assert err.error_class is ErrorClass.TRANSIENT


# --- media ------------------------------------------------------------------------------------------


async def test_sending_an_id_the_sandbox_expired_is_a_media_error(client: WhatsAppClient,
                                                                 fresh: SandboxHandle) -> None:
    def image(media_id: str) -> SendRequest:
        return SendRequest.model_validate({"to": "+16505551234", "message": {"type": "image",
                                                                              "image": {"id": media_id}}})

    media_id = await upload(fresh)
    await fresh.control.expire_media(media_id)  # Meta forgot it (its 30 days, or earlier)
    err = await expect_error(client, image(media_id))

    assert (err.code, err.error_class) == (131053, ErrorClass.MEDIA)
    uploaded_again = await upload(fresh)
    assert uploaded_again != media_id
    assert (await client.send_message(image(uploaded_again))).wamid.startswith("wamid.")


async def test_unsupported_media_type_is_invalid(fresh: SandboxHandle) -> None:
    with pytest.raises(GraphApiError) as info:
        await upload(fresh, b"GIF89a....", "image/gif")
    assert (info.value.code, info.value.error_class) == (100, ErrorClass.INVALID)


# --- health -----------------------------------------------------------------------------------------


async def test_check_health(client: WhatsAppClient, fresh: SandboxHandle) -> None:
    number = await client.check_health(NUMBER)
    assert number["id"] == NUMBER
    assert number["display_phone_number"]

    await fresh.control.configure(phone_number_ids=["999999"])
    with pytest.raises(GraphApiError) as info:
        await client.check_health(NUMBER)
    assert info.value.error_class is ErrorClass.INVALID
    assert info.value.error_subcode == 33
