"""An httpx transport speaking HTTP/1.1 itself, with errors that say whether the request left.

    transport = Http11Transport(max_connections=400)
    await transport.handle_async_request(httpx.Request("POST", url, content=body))
    target = transport.prepare("POST", httpx.URL(url), [("host", "graph.facebook.com")])  # once per endpoint
    answer = await transport.send(target, [("content-length", "2")], b"{}", transport.timeout({"read": 10.0}),
                                  request=lambda: httpx.Request("POST", url))
    answer.status, answer.body                  # no httpx objects unless an error needs one

Why by hand: the sender makes one small POST per message, ~1,000 a second per business number, and
the HTTP stack was its largest cost. httpx's own transport cost 10-150x raw aiohttp per call at 50-400
calls in flight and stalled at ~30 calls/s; aiohttp's client spent ~30 % of the sender's CPU per
message on machinery an API call does not use (streams, payload writers, cookie and redirect logic,
per-call timers); httpx-aiohttp costs the same and maps a disconnect *after* the request was sent to
`httpx.ConnectTimeout`, marking a possible duplicate as safe to retry (bench/client.py,
docs/whatsapp.md). This module is the part an API call does need, on asyncio protocols and
httptools' parser (llhttp, the parser Node.js uses): a keep-alive pool, TLS, environment proxies
(absolute-form for http, CONNECT for https), connect/pool/read timeouts, whole bodies, and errors
that keep "before" and "after sending" apart.

`send` is the exchange without httpx's objects: `WhatsAppClient` calls it with a target prepared once
per endpoint (request line and fixed headers already encoded), because building an `httpx.Request` and
an `httpx.Response` per call cost more CPU than the exchange. `handle_async_request` sends the same
bytes for an `httpx.Request`; an answer with a `Content-Encoding` is decoded by `httpx.Response`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, cast

import httptools
import httpx

# Meta's edge and most servers (uvicorn: 5 s) drop idle keep-alive connections after a few seconds.
# A POST on a connection the server has just closed fails with a disconnect that looks exactly like
# "Meta may have sent it" (a POST is never retried here), so idle connections are dropped first.
KEEPALIVE_EXPIRY_SECONDS = 4.0

_Address = tuple[str, str, int]  # scheme, host, port of the server (not of a proxy)


class Answer(NamedTuple):
    """A whole answer as it came off the wire: the body still carries any `Content-Encoding`."""

    status: int
    reason: str
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    encoded: bool  # a Content-Encoding header is present: only `response()` gives the real content

    def response(self, request: httpx.Request) -> httpx.Response:
        """The httpx response (which undoes the content encoding, raising `httpx.DecodingError`)."""
        return httpx.Response(
            self.status,
            headers=self.raw_headers,
            content=self.body,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": self.reason.encode()},
        )


class Timeouts(NamedTuple):
    """httpx's pool, connect and read timeouts in seconds (None: wait forever). Read covers the whole
    answer, from the request written to its last byte; a write timeout is not enforced (a request is
    a few hundred bytes into the socket buffer)."""

    pool: float | None
    connect: float | None
    read: float | None


class Target(NamedTuple):
    """Where and how a request goes: built once per endpoint by `prepare`."""

    address: _Address
    head: bytes  # request line and the fixed headers, encoded; the per-call ones follow
    proxy: tuple[str, int, bytes | None] | None  # host, port, Proxy-Authorization value


class _Disconnected(Exception):
    """The server closed the connection before the answer was whole."""


class _TimedOut(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one exchange at a time, parsed by httptools as the bytes arrive."""

    def __init__(self, on_lost: Callable[[_Connection], None]) -> None:
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._reason = b""
        self._started = False  # a byte of the answer arrived
        self._until_close = False  # neither Content-Length nor Transfer-Encoding: the body ends at EOF
        self._tunnel = False  # answering a CONNECT: done at the end of its headers
        self._keep_alive = False  # read while the parser still holds the answer's flags

    # --- the exchange -----------------------------------------------------------------------------

    def exchange(self, data: bytes, read_timeout: float | None, *, tunnel: bool = False) -> asyncio.Future[Answer]:
        """Write a whole request; the future gets its whole answer, or `_Disconnected`/`_TimedOut`/a parser error."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._headers, self._body, self._reason = [], [], b""
        self._started = self._until_close = self._keep_alive = False
        self._tunnel = tunnel
        self.transport.write(data)
        if read_timeout is not None:
            self._timer = loop.call_later(read_timeout, self._fail, _TimedOut())
        return self._waiter

    def _finish(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            encoded = any(name.lower() == b"content-encoding" for name, _ in self._headers)
            waiter.set_result(Answer(self._parser.get_status_code(), self._reason.decode("latin-1"),
                                     tuple(self._headers), b"".join(self._body), encoded))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def reset_parser(self) -> None:
        """A fresh parser for the server behind a CONNECT tunnel, now that the proxy's answer is read."""
        self._parser = httptools.HttpResponseParser(self)

    def reusable(self) -> bool:
        return not self.closed and self._keep_alive

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection can't be trusted again
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and self._until_close and exc is None:
            self._finish()
        self._fail(exc if exc is not None else _Disconnected())
        self._on_lost(self)

    # --- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._started = True

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._tunnel:
            self._finish()
            return
        names = {name.lower() for name, _ in self._headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._finish()

    def answer_started(self) -> bool:
        return self._started


class Http11Transport(httpx.AsyncBaseTransport):
    """At most `max_connections` open at once, opened lazily in the running loop and kept alive for
    `keepalive_expiry` seconds idle. Reads each answer whole: meant for API calls, not downloads."""

    def __init__(
        self,
        max_connections: int = 400,
        *,
        keepalive_expiry: float = KEEPALIVE_EXPIRY_SECONDS,
        verify: ssl.SSLContext | bool = True,
        trust_env: bool = True,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        self._trust_env = trust_env
        self._idle: dict[_Address, list[_Connection]] = {}
        self._connections: set[_Connection] = set()
        self._opening = 0
        self._slot_freed: collections.deque[asyncio.Future[None]] = collections.deque()
        self._timeouts: dict[tuple[float | None, float | None, float | None], Timeouts] = {}

    def timeout(self, timeouts: Mapping[str, float | None]) -> Timeouts:
        """The timeouts of httpx's `timeout` extension (`httpx.Timeout(...).as_dict()`), built once."""
        key = (timeouts.get("pool"), timeouts.get("connect"), timeouts.get("read"))
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = Timeouts(*key)
        return found

    def prepare(self, method: str, url: httpx.URL, headers: Sequence[tuple[str, str]]) -> Target:
        """The request line and `headers` encoded once, and the proxy the environment names for `url`."""
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"{url.scheme!r} URLs are not supported")
        address = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        proxy = self._proxy_for(url)
        # A proxy carrying plain http wants the absolute URL; a CONNECT tunnel (https) the path.
        target = str(url.copy_with(fragment=None)) if proxy and url.scheme == "http" else url.raw_path.decode("ascii")
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers]
        if proxy and url.scheme == "http" and proxy[2] is not None:
            lines.append(f"proxy-authorization: {proxy[2].decode('latin-1')}")
        return Target(address, ("\r\n".join(lines) + "\r\n").encode("latin-1"), proxy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            content = request.content
        except httpx.RequestNotRead:
            content = await request.aread()
        target = self.prepare(request.method, request.url, request.headers.multi_items())
        answer = await self.send(target, (), content, self.timeout(request.extensions.get("timeout", {})),
                                 lambda: request)
        return answer.response(request)

    async def send(
        self,
        target: Target,
        headers: Sequence[tuple[str, str]],
        content: bytes | None,
        timeouts: Timeouts,
        request: Callable[[], httpx.Request],
    ) -> Answer:
        """One exchange: `target` from `prepare`, then `headers` (the per-call ones) and `content`;
        `request` makes the `httpx.Request` a raised httpx error names."""
        connection = self._idle_connection(target.address) or await self._connect(target, timeouts, request)
        data = b"".join((target.head, *(f"{n}: {v}\r\n".encode("latin-1") for n, v in headers), b"\r\n",
                         content or b""))
        try:
            answer = await connection.exchange(data, timeouts.read)
        except asyncio.CancelledError:
            connection.close()  # the answer may still come: nothing else may read it
            raise
        except Exception as exc:
            raise _after_sending(exc, connection.answer_started(), request()) from exc
        if connection.reusable():
            connection.idle_since = time.monotonic()
            self._idle.setdefault(target.address, []).append(connection)
            self._free_slot()
        else:
            connection.close()
        return answer

    async def ready(self, target: Target, timeouts: Timeouts) -> None:
        """Return once a kept-alive connection to `target`'s host is idle, opening one if none is.

        A `send` to it right after, with no await in between, then writes at once: the sender checks
        Meta's rate window between the two, so the check is the moment the request leaves. A connection
        that cannot be opened is not reported here; `send` tries again and raises the error.
        """
        connection = self._idle_connection(target.address)
        if connection is not None:
            self._idle[target.address].append(connection)  # back where it was, still the most recently used
            return
        scheme, host, port = target.address
        try:
            connection = await self._connect(target, timeouts, lambda: httpx.Request("GET", f"{scheme}://{host}:{port}"))
        except httpx.TransportError:
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(target.address, []).append(connection)
        self._free_slot()  # a task waiting for a slot may take it

    async def aclose(self) -> None:
        for connection in list(self._connections):
            connection.close()
        self._idle.clear()

    # --- the pool -----------------------------------------------------------------------------------

    def _idle_connection(self, address: _Address) -> _Connection | None:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be closed by now
            if not connection.closed and now - connection.idle_since < self._keepalive_expiry:
                return connection
            connection.close()
        return None

    async def _connect(self, target: Target, timeouts: Timeouts, request: Callable[[], httpx.Request]) -> _Connection:
        try:
            async with asyncio.timeout(timeouts.pool):
                while len(self._connections) + self._opening >= self._max_connections:
                    if not self._close_an_idle_connection():
                        waiter = asyncio.get_running_loop().create_future()
                        self._slot_freed.append(waiter)
                        await waiter
                    connection = self._idle_connection(target.address)
                    if connection is not None:
                        return connection
        except TimeoutError:
            raise httpx.PoolTimeout("no connection free within the pool timeout", request=request()) from None
        self._opening += 1
        try:
            async with asyncio.timeout(timeouts.connect):
                connection = await self._open(target)
        except TimeoutError:
            raise httpx.ConnectTimeout("connect timed out", request=request()) from None
        except httpx.ProxyError as exc:
            raise type(exc)(str(exc), request=request()) from exc
        except (OSError, ssl.SSLError, _Disconnected) as exc:
            kind = httpx.ProxyError if target.proxy else httpx.ConnectError
            raise kind(str(exc) or type(exc).__name__, request=request()) from exc
        finally:
            self._opening -= 1
            self._free_slot()
        return connection

    async def _open(self, target: Target) -> _Connection:
        loop = asyncio.get_running_loop()
        scheme, host, port = target.address
        tls = self._ssl if scheme == "https" else None
        if target.proxy is None:
            _, connection = await loop.create_connection(
                lambda: _Connection(self._lost), host, port, ssl=tls, server_hostname=host if tls else None)
            self._connections.add(connection)
            return connection
        proxy_host, proxy_port, authorization = target.proxy
        _, connection = await loop.create_connection(lambda: _Connection(self._lost), proxy_host, proxy_port)
        self._connections.add(connection)
        if tls is None:
            return connection
        try:
            head = f"CONNECT {host}:{port} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode("latin-1")
            if authorization is not None:
                head += b"proxy-authorization: " + authorization + b"\r\n"
            answer = await connection.exchange(head + b"\r\n", None, tunnel=True)
            if answer.status != 200:
                raise httpx.ProxyError(f"the proxy answered CONNECT with {answer.status} {answer.reason}")
            assert connection.transport is not None
            connection.transport = await loop.start_tls(connection.transport, connection, tls, server_hostname=host)
            connection.reset_parser()
        except BaseException:
            connection.close()
            raise
        return connection

    def _close_an_idle_connection(self) -> bool:
        for idle in self._idle.values():
            if idle:
                idle.pop(0).close()
                return True
        return False

    def _lost(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        for idle in self._idle.values():
            if connection in idle:
                idle.remove(connection)
        self._free_slot()

    def _free_slot(self) -> None:
        while self._slot_freed:
            waiter = self._slot_freed.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _proxy_for(self, url: httpx.URL) -> tuple[str, int, bytes | None] | None:
        """HTTP(S)_PROXY and NO_PROXY, as curl and requests read them."""
        if not self._trust_env or urllib.request.proxy_bypass(url.host):
            return None
        found = urllib.request.getproxies_environment().get(url.scheme)
        if not found:
            return None
        proxy = urllib.parse.urlsplit(found if "://" in found else f"http://{found}")
        if proxy.scheme != "http" or not proxy.hostname:
            raise httpx.UnsupportedProtocol(f"only http:// proxies are supported, not {proxy.scheme}://")
        authorization = None
        if proxy.username is not None:
            credentials = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
            authorization = b"Basic " + base64.b64encode(credentials.encode())
        return proxy.hostname, proxy.port or 80, authorization


def _after_sending(exc: BaseException, answered: bool, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for a failure once the request was written: every one may have reached Meta."""
    if isinstance(exc, _TimedOut):
        return httpx.ReadTimeout("no whole answer within the read timeout", request=request)
    if isinstance(exc, _Disconnected):
        if answered:  # the answer began and stopped: a truncated body
            return httpx.ReadError("the server closed the connection mid-answer", request=request)
        return httpx.RemoteProtocolError("the server disconnected without answering", request=request)
    if isinstance(exc, httptools.HttpParserError):
        return httpx.RemoteProtocolError(f"malformed answer: {exc}", request=request)
    # A reset or a broken pipe: the write went to the kernel's buffer, so it cannot be told from a
    # failed read. Assume the request may have arrived.
    return httpx.ReadError(str(exc) or type(exc).__name__, request=request)
