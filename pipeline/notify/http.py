"""The POST of one callback: signed, bounded in time and size, never redirected, only to vetted addresses.

    poster = CallbackPoster(settings.notify, policy)
    answer = await poster.post(delivery)     # Answer(status=200, …) or Answer(None, error="…")
    await poster.aclose()

httpx requests on the project's aiohttp transport (pipeline/whatsapp/transport.py: several times
cheaper per call than httpx's own pool), with `SafeResolver` in the connector so a name that
resolves to a refused address fails to connect, proxies from the environment ignored (a proxy would
connect on our behalf, past the resolver), redirects never followed, at most
NOTIFY_MAX_RESPONSE_BYTES of an answer read, and the whole attempt within connect + read timeouts.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from pipeline.notify.delivery import Answer, Delivery
from pipeline.notify.settings import NotifySettings
from pipeline.notify.signing import HEADER, signature_header
from pipeline.notify.urls import SafeResolver, UrlPolicy
from pipeline.whatsapp.transport import AiohttpTransport

USER_AGENT = "whatsapp-delivery-notify/1"
_ANSWER_CHARS = 512  # of an endpoint's answer, kept in a dead letter


class CallbackPoster:
    def __init__(self, notify: NotifySettings, policy: UrlPolicy, *, max_connections: int = 4096) -> None:
        self._transport = AiohttpTransport(
            max_connections,
            trust_env=False,
            resolver=SafeResolver(policy),
            max_response_bytes=notify.max_response_bytes,
        )
        self._timeout = httpx.Timeout(
            connect=notify.connect_timeout_seconds,
            read=notify.read_timeout_seconds,
            write=notify.read_timeout_seconds,
            pool=notify.connect_timeout_seconds,
        ).as_dict()
        self._budget = notify.connect_timeout_seconds + notify.read_timeout_seconds
        self._urls: dict[str, httpx.URL] = {}

    async def post(self, delivery: Delivery) -> Answer:
        subscription = delivery.subscription
        url = self._urls.get(subscription.url)
        if url is None:
            url = self._urls[subscription.url] = httpx.URL(subscription.url)
        event = delivery.event
        headers = {
            "host": url.netloc.decode("ascii"),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            HEADER: signature_header(subscription.secret.get_secret_value(), delivery.body, int(time.time())),
            "x-delivery-event-id": event.event_id,
            "x-delivery-event-type": event.type.value,
            "x-delivery-attempt": str(delivery.attempts),
        }
        request = httpx.Request(
            "POST", url, headers=headers, content=delivery.body, extensions={"timeout": self._timeout}
        )
        try:
            async with asyncio.timeout(self._budget):
                response = await self._transport.handle_async_request(request)
        except TimeoutError:
            return Answer(None, timed_out=True, error=f"no answer within {self._budget:g} s")
        except httpx.TimeoutException as exc:
            return Answer(None, timed_out=True, error=f"{type(exc).__name__}: {exc}")
        except httpx.TransportError as exc:
            return Answer(None, error=f"{type(exc).__name__}: {exc}")
        text = response.content[:_ANSWER_CHARS].decode("utf-8", "replace")
        return Answer(response.status_code, retry_after=response.headers.get("retry-after"), body=text)

    async def aclose(self) -> None:
        await self._transport.aclose()
