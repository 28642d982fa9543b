"""The POST of one callback: signed, bounded in time and size, never redirected, only to vetted addresses.

    poster = CallbackPoster(settings.notify, policy)
    answer = await poster.post(delivery)     # Answer(status=200) or Answer(None, error="…")
    await poster.aclose()

aiohttp's client directly, without httpx's Request and Response objects: building those cost as
much CPU per callback as the whole aiohttp POST (bench/notify.py, BENCHMARKS.md), and the stage's
CPU target is twice a bare aiohttp loop. aiohttp rather than the Graph client's hand-written
transport (pipeline/whatsapp/transport.py) because callbacks go to anyone's endpoint: aiohttp's
connector takes a resolver, which is where the address vetting lives. One pool per process, opened
in the running loop, precise errors. In addition: `SafeResolver` in the connector
(a name that resolves to a refused address fails to connect), proxies from the environment ignored
(a proxy would connect on our behalf, past the resolver), redirects never followed, at most
NOTIFY_MAX_RESPONSE_BYTES of an answer read, and the whole attempt within connect + read timeouts.
"""

from __future__ import annotations

import time

import aiohttp

from pipeline.notify.deliveries import Answer, Delivery
from pipeline.notify.settings import NotifySettings
from pipeline.notify.signing import HEADER, signature_header
from pipeline.notify.urls import SafeResolver, UrlPolicy

USER_AGENT = "whatsapp-delivery-notify/1"
_ANSWER_CHARS = 512  # of an endpoint's answer, kept in a dead letter
KEEPALIVE_EXPIRY_SECONDS = 4.0  # under most servers' idle timeout (uvicorn: 5 s), as the transport does


class CallbackPoster:
    def __init__(self, notify: NotifySettings, policy: UrlPolicy, *, max_connections: int = 4096) -> None:
        self._policy = policy
        self._max_connections = max_connections
        self._max_bytes = notify.max_response_bytes
        self._budget = notify.connect_timeout_seconds + notify.read_timeout_seconds
        # `total` bounds the whole attempt (a server dripping bytes resets sock_read, never total).
        self._timeout = aiohttp.ClientTimeout(
            total=self._budget, sock_connect=notify.connect_timeout_seconds, connect=notify.connect_timeout_seconds,
            sock_read=notify.read_timeout_seconds,
        )
        self._session: aiohttp.ClientSession | None = None
        self._secrets: dict[int, str] = {}  # id(subscription): the settings keep them alive

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=KEEPALIVE_EXPIRY_SECONDS, ttl_dns_cache=60,
            resolver=SafeResolver(self._policy),
        )
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
            skip_auto_headers=("Accept-Encoding",),
        )
        return self._session

    async def post(self, delivery: Delivery) -> Answer:
        session = self._session or self._open()
        subscription, event = delivery.subscription, delivery.event
        secret = self._secrets.get(id(subscription))
        if secret is None:
            secret = self._secrets[id(subscription)] = subscription.secret.get_secret_value()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            HEADER: signature_header(secret, delivery.body, int(time.time())),
            "X-Delivery-Event-Id": event.event_id,
            "X-Delivery-Event-Type": event.type.value,
            "X-Delivery-Attempt": str(delivery.attempts),
        }
        traceparent = delivery.source.headers.get("traceparent")
        if traceparent:
            headers["traceparent"] = traceparent  # the original send's trace, for receivers that join it
        try:
            async with session.post(
                subscription.url, data=delivery.body, headers=headers, allow_redirects=False, timeout=self._timeout,
            ) as response:
                status = response.status
                # Read (up to the limit) even when it is of no use: a body left unread closes the connection.
                body = await response.content.read(self._max_bytes)
                if 200 <= status < 300:
                    return Answer(status)
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            return Answer(None, timed_out=True, error=f"no answer within the timeouts ({self._budget:g} s in all)")
        except aiohttp.ClientError as exc:
            return Answer(None, error=f"{type(exc).__name__}: {exc}")
        text = body[:_ANSWER_CHARS].decode("utf-8", "replace")
        return Answer(status, retry_after=retry_after, body=text)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
