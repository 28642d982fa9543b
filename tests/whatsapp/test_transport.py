"""The HTTP/1.1 transport over real sockets: each way a call can fail maps to the right httpx error,
and the client turns it into the right ambiguity."""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
import socket
import ssl as ssl_module
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import pytest
import uvloop
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider

from pipeline.whatsapp import GraphApiError, WhatsAppClient
from pipeline.whatsapp.transport import Http11Transport, _after_sending, _Disconnected, _TimedOut
from tests.pki import make_pki
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

    async def until_received(self, count: int) -> None:
        """Until `count` requests were read: a call in a task has really reached the server."""
        async with asyncio.timeout(10):
            while len(self.received) < count:
                await asyncio.sleep(0.005)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()


class KeepAliveServer:
    """Answers every request on a connection until told otherwise; counts connections and requests."""

    def __init__(self, close_after: int = 0, chunked: bool = False, ssl: ssl_module.SSLContext | None = None) -> None:
        self.close_after = close_after  # hang up after this many answers on a connection (0: never)
        self.chunked = chunked
        self.ssl = ssl
        self.connections = 0
        self.received: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        answered = 0
        try:
            while True:
                self.received.append(await read_request(reader))
                if self.chunked:
                    half = len(OK_BODY) // 2
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" +
                                 b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, OK_BODY[:half], len(OK_BODY) - half,
                                                                          OK_BODY[half:]))
                    await writer.drain()
                else:
                    await answer(writer)
                answered += 1
                if answered == self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> KeepAliveServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()


async def answer(writer: asyncio.StreamWriter, body: bytes = OK_BODY, extra: bytes = b"") -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + extra +
                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()


@pytest.fixture
async def transport() -> AsyncIterator[Http11Transport]:
    t = Http11Transport(max_connections=10, trust_env=False)
    yield t
    await t.aclose()


async def send_through(transport: Http11Transport, base_url: str, timeout: float = 2.0) -> GraphApiError | str:
    client = WhatsAppClient(wa_settings(base_url, timeout_seconds=timeout), transport=transport)
    try:
        return (await client.send_message(request())).wamid
    except GraphApiError as err:
        return err


async def test_a_plain_answer_and_a_gzipped_one(transport: Http11Transport) -> None:
    async def gzipped(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(writer, gzip.compress(OK_BODY), b"content-encoding: gzip\r\n")

    async with RawServer(lambda _, w: answer(w)) as plain, RawServer(gzipped) as packed:
        assert await send_through(transport, plain.url) == "wamid.OK"
        assert await send_through(transport, packed.url) == "wamid.OK"


class ThroughHttpx(Http11Transport):
    """The same transport, reached the generic way: through `httpx.Request` and `httpx.Response`."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await super().handle_async_request(request)


@pytest.mark.parametrize("traced", [False, True])
async def test_the_direct_path_sends_what_the_httpx_path_sends(traced: bool) -> None:
    # WhatsAppClient skips httpx's objects on its own transport (Http11Transport.send): same bytes.
    provider = TracerProvider() if traced else NoOpTracerProvider()
    async with KeepAliveServer() as server:
        for transport in (Http11Transport(trust_env=False), ThroughHttpx(trust_env=False)):
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


async def test_an_encoded_or_failed_answer_still_goes_through_httpx(transport: Http11Transport) -> None:
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


async def test_connection_refused_is_not_ambiguous(transport: Http11Transport) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = await send_through(transport, f"http://127.0.0.1:{port}")

    assert isinstance(err, GraphApiError)
    assert err.ambiguous is False
    assert "ConnectError before the request was sent" in str(err)


async def test_disconnect_after_the_request_arrived_is_ambiguous(transport: Http11Transport) -> None:
    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with RawServer(hang_up) as server:
        err = await send_through(transport, server.url)

    assert len(server.received) == 1  # the server had the whole request: Meta could have sent it
    assert isinstance(err, GraphApiError)
    assert err.ambiguous is True
    assert "RemoteProtocolError after the request was sent" in str(err)


async def test_reset_after_the_request_arrived_is_ambiguous(transport: Http11Transport) -> None:
    async def reset(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        writer.transport.abort()

    async with RawServer(reset) as server:
        err = await send_through(transport, server.url)

    assert isinstance(err, GraphApiError)
    assert err.ambiguous is True


async def test_truncated_answer_is_ambiguous(transport: Http11Transport) -> None:
    async def truncated(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n" + OK_BODY[:10])
        await writer.drain()

    async with RawServer(truncated) as server:
        err = await send_through(transport, server.url)

    assert isinstance(err, GraphApiError)
    assert err.ambiguous is True
    assert "ReadError" in str(err)


async def test_read_timeout_is_ambiguous(transport: Http11Transport) -> None:
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

    transport = Http11Transport(max_connections=1, trust_env=False)
    async with RawServer(held) as server:
        first = asyncio.create_task(send_through(transport, server.url, timeout=5))
        await server.until_received(1)
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
        transport = Http11Transport(trust_env=True)
        assert await send_through(transport, "http://graph.example.invalid") == "wamid.OK"
        await transport.aclose()

    # A proxy gets the absolute URL in the request line.
    assert server.received[0].startswith(b"POST http://graph.example.invalid/v23.0/")


@pytest.mark.parametrize(
    ("failure", "answered", "httpx_error"),
    [
        (_TimedOut(), False, httpx.ReadTimeout),
        (_Disconnected(), False, httpx.RemoteProtocolError),
        (_Disconnected(), True, httpx.ReadError),  # a truncated body
        (ConnectionResetError(104, "Connection reset by peer"), False, httpx.ReadError),
        (BrokenPipeError(32, "Broken pipe"), False, httpx.ReadError),
    ],
)
def test_failures_after_sending_map_to_the_httpx_error_with_the_same_meaning(
    failure: BaseException, answered: bool, httpx_error: type[httpx.TransportError]
) -> None:
    mapped = _after_sending(failure, answered, httpx.Request("POST", "http://x/"))
    assert type(mapped) is httpx_error


async def test_one_connection_carries_call_after_call(transport: Http11Transport) -> None:
    async with KeepAliveServer() as server:
        for _ in range(5):
            assert await send_through(transport, server.url) == "wamid.OK"
    assert (server.connections, len(server.received)) == (1, 5)


async def test_ready_opens_the_connection_the_next_send_writes_on_without_waiting(
    transport: Http11Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sender checks Meta's rate window between `ready` and the send: nothing may wait in between.
    async with KeepAliveServer() as server:
        client = WhatsAppClient(wa_settings(server.url), transport=transport)
        number = request().phone_number_id or "106540352242922"
        await client.ready(number)
        await client.ready(number)  # an idle connection is there: nothing new is opened

        async def no_connect(*_: object) -> None:
            raise AssertionError("the send waited for a connection after ready()")

        monkeypatch.setattr(transport, "_connect", no_connect)
        assert (await client.send_message(request())).wamid == "wamid.OK"
    assert (server.connections, len(server.received)) == (1, 1)


async def test_ready_reports_nothing_and_the_send_reports_the_refused_connection(transport: Http11Transport) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        client = WhatsAppClient(wa_settings(f"http://127.0.0.1:{port}"), transport=transport)
        await client.ready(request().phone_number_id or "106540352242922")
        outcome = await send_through(transport, f"http://127.0.0.1:{port}")
    assert isinstance(outcome, GraphApiError)
    assert not outcome.ambiguous  # it never left


async def test_a_connection_the_server_closed_is_not_used_again(transport: Http11Transport) -> None:
    async with KeepAliveServer(close_after=1) as server:
        for _ in range(3):
            assert await send_through(transport, server.url) == "wamid.OK"
            await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
    assert (server.connections, len(server.received)) == (3, 3)


async def test_connection_close_in_the_answer_is_obeyed(transport: Http11Transport) -> None:
    async def closing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(writer, extra=b"connection: close\r\n")
        await asyncio.sleep(0.5)  # keeps the socket open: only the header says not to reuse it

    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await closing(reader, writer)

    async with RawServer(counted) as server:
        assert await send_through(transport, server.url) == "wamid.OK"
        assert await send_through(transport, server.url) == "wamid.OK"
    assert connections == 2


async def test_a_chunked_answer_is_read_whole(transport: Http11Transport) -> None:
    async with KeepAliveServer(chunked=True) as server:
        assert await send_through(transport, server.url) == "wamid.OK"
        assert await send_through(transport, server.url) == "wamid.OK"
    assert server.connections == 1


async def test_an_answer_ending_at_close_is_whole(transport: Http11Transport) -> None:
    async def until_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + OK_BODY)
        await writer.drain()

    async with RawServer(until_close) as server:
        assert await send_through(transport, server.url) == "wamid.OK"


async def test_a_cancelled_call_closes_its_connection(transport: Http11Transport) -> None:
    release = asyncio.Event()

    async def late(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        await answer(writer)

    async with RawServer(late) as server:
        call = asyncio.create_task(send_through(transport, server.url, timeout=5))
        await server.until_received(1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        release.set()
        # A late answer to the cancelled call must not become the next call's answer.
        assert await send_through(transport, server.url) == "wamid.OK"
    assert len(server.received) == 2


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl_module.SSLContext, ssl_module.SSLContext]:
    """(the server's context for 127.0.0.1, a client context trusting only the test CA)."""
    pki, keystore = make_pki(tmp_path)
    server = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    server.load_cert_chain(keystore)
    return server, ssl_module.create_default_context(cafile=str(pki.ca))


async def test_https_with_the_certificate_checked(tls: tuple[ssl_module.SSLContext, ssl_module.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    trusting = Http11Transport(verify=client_ctx, trust_env=False)
    default = Http11Transport(trust_env=False)  # the system's CAs: the test CA is not one of them
    async with KeepAliveServer(ssl=server_ctx) as server:
        assert await send_through(trusting, server.url) == "wamid.OK"
        assert await send_through(trusting, server.url) == "wamid.OK"
        refused = await send_through(default, server.url)
    await trusting.aclose()
    await default.aclose()

    assert server.connections == 1  # kept alive for the trusting client; the other never got past the handshake
    assert isinstance(refused, GraphApiError)
    assert refused.ambiguous is False
    assert "ConnectError before the request was sent" in str(refused)


async def test_https_through_a_connect_proxy_with_credentials(
    tls: tuple[ssl_module.SSLContext, ssl_module.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_ctx, client_ctx = tls
    connects: list[bytes] = []

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        connects.append(head)
        if b"proxy-authorization: Basic " + base64.b64encode(b"alice:s3cret") not in head:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    proxy = await asyncio.start_server(tunnel, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        async with KeepAliveServer(ssl=server_ctx) as server:
            monkeypatch.setenv("HTTPS_PROXY", f"http://alice:s3cret@127.0.0.1:{proxy_port}")
            transport = Http11Transport(verify=client_ctx, trust_env=True)
            assert await send_through(transport, server.url) == "wamid.OK"
            assert await send_through(transport, server.url) == "wamid.OK"
            await transport.aclose()

            monkeypatch.setenv("HTTPS_PROXY", f"http://alice:wrong@127.0.0.1:{proxy_port}")
            rejected = Http11Transport(verify=client_ctx, trust_env=True)
            refused = await send_through(rejected, server.url)
            await rejected.aclose()
    finally:
        proxy.close()

    assert connects[0].startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1".encode())
    assert len(connects) == 2  # the tunnel was kept alive for the second call; then the refused one
    assert server.received[0].startswith(b"POST /v23.0/")  # inside the tunnel: the path, not the URL
    assert isinstance(refused, GraphApiError)
    assert refused.ambiguous is False
    assert "407" in str(refused)


def test_it_runs_on_uvloop_as_deployed() -> None:
    # uvloop's transports are not asyncio.Transport subclasses; the stages run on uvloop.
    async def scenario() -> list[GraphApiError | str]:
        transport = Http11Transport(trust_env=False)
        async with KeepAliveServer() as server:
            sent = [await send_through(transport, server.url) for _ in range(2)]
        await transport.aclose()
        return sent

    assert uvloop.run(scenario()) == ["wamid.OK", "wamid.OK"]
