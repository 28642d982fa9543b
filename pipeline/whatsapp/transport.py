"""An httpx transport on aiohttp's connection pool, with errors that say whether the request left.

    transport = AiohttpTransport(max_connections=400)
    await transport.handle_async_request(httpx.Request("POST", url, content=body))
    answer = await transport.send("POST", yarl.URL(url), [("content-type", "application/json")], body,
                                  transport.timeout({"read": 10.0}), request=lambda: httpx.Request("POST", url))
    answer.status, answer.body                  # no httpx objects unless an error needs one

Why not httpx's own transport: at 50-400 requests in flight its pool cost 10-150x the CPU per call
of raw aiohttp and stalled at ~30 calls/s (bench/client.py; docs/whatsapp.md). Why not
`httpx-aiohttp`'s transport (same cost within noise): it maps every `aiohttp.ClientConnectionError`,
a disconnect *after* the request was sent included, to `httpx.ConnectTimeout`, which would mark a
possible duplicate send as safe to retry. This one is the same idea in a short module: precise errors,
whole bodies (no streaming layers), env proxies resolved once per host rather than on every call.

`send` is the same exchange without httpx's objects: `WhatsAppClient` calls it directly on this
transport, because building an `httpx.Request` and an `httpx.Response` per call (header
normalisation, streams, the response's decoder chain) cost more CPU than aiohttp's whole request.
It takes the headers exactly as `handle_async_request` would pass them, so the wire is the same, and
raises the same httpx errors (the `httpx.Request` they carry is built only then).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import aiohttp
import httpx
import yarl
from aiohttp.helpers import get_env_proxy_for_url

# Meta's edge and most servers (uvicorn: 5 s) drop idle keep-alive connections after a few seconds.
# A POST on a connection the server has just closed fails with a disconnect that looks exactly like
# "Meta may have sent it" (aiohttp never retries a POST), so idle connections are dropped first.
KEEPALIVE_EXPIRY_SECONDS = 4.0

_Proxy = tuple[yarl.URL, aiohttp.BasicAuth | None] | None


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


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One pool per process, opened lazily inside the running loop. Reads each response whole:
    meant for API calls, not for streaming large downloads. httpx's write timeout is not enforced
    (aiohttp has none); connect, read and pool timeouts are."""

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
        self._ssl = httpx.create_ssl_context(verify=verify) if verify is not False else False
        self._trust_env = trust_env
        self._proxies: dict[tuple[str, str], _Proxy] = {}
        self._timeouts: dict[tuple[float | None, float | None, float | None], aiohttp.ClientTimeout] = {}
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive_expiry, ttl_dns_cache=300, ssl=self._ssl
        )
        # No cookie jar (the Graph API sets none we need); bodies decoded by httpx, as it expects.
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            content = request.content
        except httpx.RequestNotRead:
            content = await request.aread()
        answer = await self.send(
            request.method,
            yarl.URL(str(request.url), encoded=True),
            request.headers.multi_items(),
            content,
            self.timeout(request.extensions.get("timeout", {})),
            lambda: request,
        )
        return answer.response(request)

    def timeout(self, timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        """aiohttp's timeout for httpx's `timeout` extension (`httpx.Timeout(...).as_dict()`), built once."""
        key = (timeouts.get("pool"), timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            pool, connect, read = key
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(connect=pool, sock_connect=connect, sock_read=read)
        return timeout

    async def send(
        self,
        method: str,
        url: yarl.URL,
        headers: Sequence[tuple[str, str]],
        content: bytes | None,
        timeouts: aiohttp.ClientTimeout,
        request: Callable[[], httpx.Request],
    ) -> Answer:
        """One exchange; `timeouts` from `timeout()`; `request` makes the `httpx.Request` a raised httpx error names."""
        session = self._session or self._open()
        proxy, proxy_auth = self._proxy_for(url) or (None, None)
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                data=content or None,
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
                timeout=timeouts,
            ) as response:
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _httpx_error(exc, request()) from exc
        return Answer(
            response.status,
            response.reason or "",
            response.raw_headers,
            body,
            "Content-Encoding" in response.headers,
        )

    def _proxy_for(self, url: yarl.URL) -> _Proxy:
        if not self._trust_env:
            return None
        key = (url.scheme, url.host or "")
        if key not in self._proxies:
            try:
                self._proxies[key] = get_env_proxy_for_url(url)  # HTTP(S)_PROXY, NO_PROXY, .netrc
            except LookupError:
                self._proxies[key] = None
        return self._proxies[key]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx error that means what aiohttp's does, keeping "before" and "after sending" apart."""
    mapped: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        mapped = httpx.ConnectTimeout  # aiohttp's "connect" covers waiting for a pool slot too
    elif isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        mapped = httpx.ProxyError
    elif isinstance(exc, aiohttp.ClientConnectorError | aiohttp.InvalidURL):
        mapped = httpx.ConnectError
    elif isinstance(exc, TimeoutError):  # ServerTimeoutError (sock_read) included
        mapped = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        mapped = httpx.RemoteProtocolError
    else:
        # A reset, a broken pipe, a truncated body: aiohttp writes through a buffer, so a failed write
        # surfaces here too and cannot be told from a failed read. Assume the request may have arrived.
        mapped = httpx.ReadError
    return mapped(str(exc) or type(exc).__name__, request=request)
