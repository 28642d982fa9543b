"""The aiohttp-backed transport over real sockets: each way a call can fail maps to the right httpx error,
and the client turns it into the right ambiguity."""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider

from pipeline.whatsapp import GraphApiError, WhatsAppClient
from pipeline.whatsapp.transport import AiohttpTransport, _httpx_error
from tests.whatsapp.conftest import request, wa_settings

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_BODY = orjson.dumps({"messages": [{"id": "wamid.OK"}], "contacts": [{"wa_id": "16505551234"}]})


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = lengths[0] if lengths else 0
    return head + await reader.readexactly(length)


class RawServer:
    """A TCP server whose answer to each request is a behaviour; counts the requests it fully read."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.received: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.received.append(await read_request(reader))
            await self.behaviour(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()


async def answer(writer: asyncio.StreamWriter, body: bytes = OK_BODY, extra: bytes = b"") -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + extra +
                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    t = AiohttpTransport(max_connections=10, trust_env=False)
    yield t
    await t.aclose()


async def send_through(transport: AiohttpTransport, base_url: str, timeout: float = 2.0) -> GraphApiError | str:
    client = WhatsAppClient(wa_settings(base_url, timeout_seconds=timeout), transport=transport)
    try:
        return (await client.send_message(request())).wamid
    except GraphApiError as err:
        return err


async def test_a_plain_answer_and_a_gzipped_one(transport: AiohttpTransport) -> None:
    async def gzipped(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(writer, gzip.compress(OK_BODY), b"content-encoding: gzip\r\n")

    async with RawServer(lambda _, w: answer(w)) as plain, RawServer(gzipped) as packed:
        assert await send_through(transport, plain.url) == "wamid.OK"
        assert await send_through(transport, packed.url) == "wamid.OK"


class ThroughHttpx(AiohttpTransport):
    """The same transport, reached the generic way: through `httpx.Request` and `httpx.Response`."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await super().handle_async_request(request)


@pytest.mark.parametrize("traced", [False, True])
async def test_the_direct_path_sends_what_the_httpx_path_sends(traced: bool) -> None:
    # WhatsAppClient skips httpx's objects on its own transport (AiohttpTransport.send): same bytes.
    provider = TracerProvider() if traced else NoOpTracerProvider()
    async with RawServer(lambda _, w: answer(w)) as server:
        for transport in (AiohttpTransport(trust_env=False), ThroughHttpx(trust_env=False)):
            client = WhatsAppClient(wa_settings(server.url), transport=transport, tracer_provider=provider)
            assert (await client.send_message(request(), callback_data="req_1")).wamid == "wamid.OK"
            assert (await client.check_health()) == orjson.loads(OK_BODY)
            await client.aclose()
    direct, generic = ([re.sub(rb"traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", b"traceparent: T", r)
                        for r in server.received[i:i + 2]] for i in (0, 2))
    assert direct == generic
    assert (b"traceparent: T" in direct[0]) is traced
    assert direct[0].startswith(b"POST /v23.0/")
    assert direct[1].startswith(b"GET /v23.0/")


async def test_an_encoded_or_failed_answer_still_goes_through_httpx(transport: AiohttpTransport) -> None:
    async def gzipped_error(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = gzip.compress(orjson.dumps({"error": {"code": 131047, "message": "Re-engagement message"}}))
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                     b"retry-after: 7\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()

    async def bad_gzip(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(writer, b"not gzip", b"content-encoding: gzip\r\n")

    async with RawServer(gzipped_error) as failing, RawServer(bad_gzip) as undecodable:
        err = await send_through(transport, failing.url)
        garbled = await send_through(transport, undecodable.url)

    assert isinstance(err, GraphApiError)
    assert (err.code, err.http_status, err.retry_after, err.ambiguous) == (131047, 400, 7.0, False)
    assert isinstance(garbled, GraphApiError)
    assert garbled.ambiguous is True
    assert "DecodingError after the request was sent" in str(garbled)


async def test_connection_refused_is_not_ambiguous(transport: AiohttpTransport) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = await send_through(transport, f"http://127.0.0.1:{port}")

    assert isinstance(err, GraphApiError)
    assert err.ambiguous is False
    assert "ConnectError before the request was sent" in str(err)


async def test_disconnect_after_the_request_arrived_is_ambiguous(transport: AiohttpTransport) -> None:
    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with RawServer(hang_up) as server:
        err = await send_through(transport, server.url)

    assert len(server.received) == 1  # the server had the whole request: Meta could have sent it
    assert isinstance(err, GraphApiError)
    assert err.ambiguous is True
    assert "RemoteProtocolError after the request was sent" in str(err)


async def test_reset_after_the_request_arrived_is_ambiguous(transport: AiohttpTransport) -> None:
    async def reset(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        writer.transport.abort()

    async with RawServer(reset) as server:
        err = await send_through(transport, server.url)

    assert isinstance(err, GraphApiError)
    assert err.ambiguous is True


async def test_truncated_answer_is_ambiguous(transport: AiohttpTransport) -> None:
    async def truncated(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n" + OK_BODY[:10])
        await writer.drain()

    async with RawServer(truncated) as server:
        err = await send_through(transport, server.url)

    assert isinstance(err, GraphApiError)
    assert err.ambiguous is True
    assert "ReadError" in str(err)


async def test_read_timeout_is_ambiguous(transport: AiohttpTransport) -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    async with RawServer(silent) as server:
        err = await send_through(transport, server.url, timeout=0.3)

    assert len(server.received) == 1
    assert isinstance(err, GraphApiError)
    assert err.ambiguous is True
    assert "ReadTimeout after the request was sent" in str(err)


async def test_waiting_for_a_pool_slot_times_out_without_sending() -> None:
    release = asyncio.Event()

    async def held(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        await answer(writer)

    transport = AiohttpTransport(max_connections=1, trust_env=False)
    async with RawServer(held) as server:
        first = asyncio.create_task(send_through(transport, server.url, timeout=5))
        await asyncio.sleep(0.1)
        second = await send_through(transport, server.url, timeout=0.2)
        release.set()
        assert await first == "wamid.OK"
    await transport.aclose()

    assert isinstance(second, GraphApiError)
    assert second.ambiguous is False  # it never left: safe to retry
    assert len(server.received) == 1


async def test_environment_proxy_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async def proxy(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(writer)

    async with RawServer(proxy) as server:
        monkeypatch.setenv("HTTP_PROXY", server.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        transport = AiohttpTransport(trust_env=True)
        assert await send_through(transport, "http://graph.example.invalid") == "wamid.OK"
        await transport.aclose()

    # A proxy gets the absolute URL in the request line.
    assert server.received[0].startswith(b"POST http://graph.example.invalid/v23.0/")


@pytest.mark.parametrize(
    ("aiohttp_error", "httpx_error"),
    [
        (aiohttp.ConnectionTimeoutError("pool or connect"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (TimeoutError(), httpx.ReadTimeout),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.ReadError),
        (aiohttp.ClientPayloadError("truncated"), httpx.ReadError),
    ],
)
def test_aiohttp_errors_map_to_the_httpx_error_with_the_same_meaning(
    aiohttp_error: BaseException, httpx_error: type[httpx.TransportError]
) -> None:
    mapped = _httpx_error(aiohttp_error, httpx.Request("POST", "http://x/"))
    assert type(mapped) is httpx_error
