"""The async WhatsApp Cloud API client: one pooled connection set per process.

    async with WhatsAppClient(settings.whatsapp) as client:
        sent = await client.send_message(request, phone_number_id="106540352242922", callback_data=cb)
        sent.wamid                                   # "wamid.HBgL…"
        await client.check_health("106540352242922")   # raises GraphApiError on a bad token/number

Every failure is a `GraphApiError` (see errors.py). The client never retries a send: whether to
retry, and how soon, is the sender's decision (it knows the rate limits and the breaker). Media goes by
the id or link in the request's body; uploading it is the business's, outside the pipeline.

Requests are httpx `Request`s handed straight to an httpx transport (aiohttp's pool by default, any
`httpx.AsyncBaseTransport` such as `httpx.MockTransport` in tests). `httpx.AsyncClient` is skipped on
purpose: its per-request machinery (base-URL merging, cookie extraction, auth and redirect flows)
does nothing for the Graph API and cost about 40% of the client's CPU per call (docs/whatsapp.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
import orjson
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from pipeline.config import SANDBOX_ACCESS_TOKEN, WhatsAppSettings
from pipeline.contracts import ErrorClass, SendRequest
from pipeline.observability.context import traceparent_of
from pipeline.observability.redaction import register_secrets, wamid_ref
from pipeline.whatsapp.errors import GraphApiError, error_from_response, error_from_transport
from pipeline.whatsapp.payloads import message_payload
from pipeline.whatsapp.transport import AiohttpTransport

_PHONE_NUMBER_ID = re.compile(r"^\d{5,20}$")
_USER_AGENT = "whatsapp-delivery-pipeline"


@dataclass(frozen=True, slots=True)
class SentMessage:
    """Meta accepted the message (HTTP 200): accepted, not yet delivered."""

    wamid: str
    wa_id: str | None
    http_status: int


@dataclass(frozen=True, slots=True)
class _Endpoint:
    url: httpx.URL
    headers: httpx.Headers  # everything but traceparent, built once: headers cost CPU per call
    span_name: str
    attributes: dict[str, str]


class MessageSender(Protocol):
    """What the sender needs from a client; fakes implementing it stand in for Meta in unit tests."""

    async def send_message(
        self, request: SendRequest, *, phone_number_id: str | None = None, callback_data: str | None = None
    ) -> SentMessage: ...

    async def check_health(self, phone_number_id: str | None = None) -> dict[str, Any]:
        """The breaker's half-open probe: raises `GraphApiError` while Meta or the number is not answering."""
        ...


class WhatsAppClient:
    """Graph API calls over an httpx transport (aiohttp's connection pool unless told otherwise).

    Create one per process and share it: it holds the connection pool (up to `max_connections`).
    `tracer_provider` defaults to the global one (set by `pipeline.observability.setup`).
    """

    def __init__(
        self,
        settings: WhatsAppSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 400,
        *,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._base_url = f"{settings.api_base_url.rstrip('/')}/{settings.api_version}"
        self._transport = transport if transport is not None else AiohttpTransport(max_connections)
        self._default_number = settings.phone_number_id
        token = _access_token(settings)
        register_secrets([token])  # scrub_text (error texts, logs) then removes it whatever its shape
        self._auth = ("authorization", f"Bearer {token}")
        self._timeout = httpx.Timeout(settings.timeout_seconds).as_dict()
        self._endpoints: dict[tuple[str, str, str], _Endpoint] = {}
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return f"WhatsAppClient(base_url={self._base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    # --- messages ---------------------------------------------------------------------------------

    async def send_message(
        self, request: SendRequest, *, phone_number_id: str | None = None, callback_data: str | None = None
    ) -> SentMessage:
        """Send one message; `phone_number_id` defaults to the request's, then the settings'."""
        number = self._number(phone_number_id or request.phone_number_id)
        payload = message_payload(request, callback_data)
        return await self._post_message(number, payload)

    async def _post_message(self, number: str, payload: dict[str, Any]) -> SentMessage:
        endpoint = self._endpoint("POST", number, "messages")
        with self._span(endpoint) as span:
            request = httpx.Request(
                "POST", endpoint.url, headers=endpoint.headers, content=orjson.dumps(payload),
                extensions={"timeout": self._timeout},
            )
            response = await self._exchange(request, span)
            body = _success_body(response)
            if payload.get("status") == "read":
                # Mark-as-read answers {"success": true}; its "message" is the one marked read.
                return _marked_read(body, payload["message_id"], response.status_code)
            wamid = _first(body, "messages", "id")
            if wamid is None:
                raise GraphApiError(
                    f"HTTP {response.status_code} without messages[0].id: Meta probably accepted the message",
                    error_class=ErrorClass.TRANSIENT,
                    http_status=response.status_code,
                    ambiguous=True,
                )
            span.set_attribute("whatsapp.wamid_ref", wamid_ref(wamid))  # the wamid holds the recipient's number
            return SentMessage(wamid=wamid, wa_id=_first(body, "contacts", "wa_id"), http_status=response.status_code)

    # --- health -----------------------------------------------------------------------------------

    async def check_health(self, phone_number_id: str | None = None) -> dict[str, Any]:
        """GET the phone number object: proves the token works and the number belongs to it.

        Returns Meta's object (`id`, `display_phone_number`, `verified_name`, …); raises
        `GraphApiError` (`AUTH` for a bad token, `INVALID` for a number it cannot see).
        """
        endpoint = self._endpoint("GET", self._number(phone_number_id), "")
        with self._span(endpoint) as span:
            timeout = {"timeout": self._timeout}
            request = httpx.Request("GET", endpoint.url, headers=endpoint.headers, extensions=timeout)
            return _success_body(await self._exchange(request, span))

    # --- plumbing ---------------------------------------------------------------------------------

    def _number(self, phone_number_id: str | None) -> str:
        number = phone_number_id or self._default_number
        if number is None:
            raise ValueError("phone_number_id: required (none given and WHATSAPP_PHONE_NUMBER_ID is unset)")
        if not _PHONE_NUMBER_ID.match(number):
            raise ValueError(f"phone_number_id: must be 5 to 20 digits; got {number!r}")
        return number

    def _endpoint(self, method: str, number: str, operation: str) -> _Endpoint:
        # URLs and headers cost a measurable share of a call's CPU; a deployment has few numbers.
        key = (method, number, operation)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            url = httpx.URL(f"{self._base_url}/{number}/{operation}".rstrip("/"))
            headers = [("host", url.netloc.decode("ascii")), self._auth, ("user-agent", _USER_AGENT),
                       ("accept", "application/json")]
            if operation == "messages":
                headers.append(("content-type", "application/json"))
            endpoint = self._endpoints[key] = _Endpoint(
                url=url,
                headers=httpx.Headers(headers),
                span_name=f"{method} /{{phone_number_id}}/{operation}".rstrip("/"),
                attributes={"http.request.method": method, "url.full": str(url), "server.address": url.host},
            )
        return endpoint

    @contextmanager
    def _span(self, endpoint: _Endpoint) -> Iterator[Span]:
        """The Graph API client span, carrying the outcome Meta's body told us (wamid, error code)."""
        span = self._tracer.start_span(endpoint.span_name, kind=SpanKind.CLIENT, attributes=endpoint.attributes)
        try:
            yield span
        except GraphApiError as err:
            if span.is_recording():
                span.set_attributes(_error_attributes(err))
                span.set_status(Status(StatusCode.ERROR, err.error_class.value))
            raise
        except Exception as exc:  # a bug, not an answer: still visible on the span
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    async def _exchange(self, request: httpx.Request, span: Span) -> httpx.Response:
        # W3C traceparent of the client span, so the sandbox (or a proxy) can join the trace; not by
        # the propagator, which needs the span attached as the current context.
        traceparent = traceparent_of(span)
        if traceparent is not None:
            request.headers["traceparent"] = traceparent
        try:
            response = await self._transport.handle_async_request(request)
            response.request = request  # transports need not set it (httpx.AsyncClient would)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            raise error_from_transport(exc) from exc
        span.set_attribute("http.response.status_code", response.status_code)
        if not 200 <= response.status_code < 300:  # a redirect is not an answer either
            raise error_from_response(response)
        return response


def _access_token(settings: WhatsAppSettings) -> str:
    if settings.access_token is not None:
        return settings.access_token.get_secret_value()
    if settings.targets_meta:
        raise ValueError("access_token: WHATSAPP_ACCESS_TOKEN is required to call Meta's Graph API")
    return SANDBOX_ACCESS_TOKEN


def _success_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise GraphApiError(
            f"HTTP {response.status_code} with a body that is not a JSON object",
            error_class=ErrorClass.TRANSIENT,
            http_status=response.status_code,
            ambiguous=response.request.method == "POST",
        )
    return body


def _marked_read(body: dict[str, Any], message_id: str, http_status: int) -> SentMessage:
    if body.get("success") is not True:
        raise GraphApiError(
            f"HTTP {http_status} mark-as-read without success: true",
            error_class=ErrorClass.TRANSIENT,
            http_status=http_status,
        )
    return SentMessage(wamid=message_id, wa_id=None, http_status=http_status)


def _first(body: dict[str, Any], list_key: str, field: str) -> str | None:
    """`body[list_key][0][field]` when it is a non-empty string (Meta's `messages`, `contacts`)."""
    items = body.get(list_key)
    value = items[0].get(field) if isinstance(items, list) and items and isinstance(items[0], dict) else None
    return value if isinstance(value, str) and value else None


def _error_attributes(err: GraphApiError) -> dict[str, str | int | bool]:
    attributes: dict[str, str | int | bool] = {
        # Meta's code, else the HTTP status, else the transport error's name (`ReadTimeout`).
        "error.type": str(err.code or err.http_status or err.message.split(" ", 1)[0]),
        "whatsapp.error.class": err.error_class.value,
        "whatsapp.error.ambiguous": err.ambiguous,
    }
    if err.code is not None:
        attributes["whatsapp.error.code"] = err.code
    if err.fbtrace_id:
        attributes["whatsapp.fbtrace_id"] = err.fbtrace_id
    return attributes
