"""The async WhatsApp Cloud API client: one pooled connection set per process.

    async with WhatsAppClient(settings.whatsapp) as client:
        sent = await client.send_message(request, phone_number_id="106540352242922", callback_data=cb)
        sent.wamid                                   # "wamid.HBgL…"
        await client.check_health("106540352242922")   # raises GraphApiError on a bad token/number

Every failure is a `GraphApiError` (see errors.py). The client never retries a send: whether to
retry, and how soon, is the sender's decision (it knows the rate limits and the breaker). Media goes by
the id or link in the request's body; uploading it is the business's, outside the pipeline.

Requests are httpx `Request`s handed straight to an httpx transport (`Http11Transport` by default, any
`httpx.AsyncBaseTransport` such as `httpx.MockTransport` in tests). `httpx.AsyncClient` is skipped on
purpose: its per-request machinery (base-URL merging, cookie extraction, auth and redirect flows)
does nothing for the Graph API and cost about 40% of the client's CPU per call (docs/whatsapp.md).
On the default transport even the `Request` and `Response` objects are skipped: the client hands it
a target prepared once per endpoint (`Http11Transport.prepare` and `send`, the same wire) and
builds httpx's objects only for an error or an encoded body (BENCHMARKS.md, "Graph API client").
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
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
from pipeline.whatsapp.transport import Answer, Http11Transport, Target, Timeouts

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
    method: str
    url: httpx.URL
    headers: httpx.Headers  # everything but content-length and traceparent, built once: headers cost CPU
    target: Target | None  # the same, prepared for Http11Transport.send when the client calls it directly
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

    async def ready(self, phone_number_id: str) -> None:
        """Return when a `send_message` for the number, started right after, would write without waiting."""
        ...


class WhatsAppClient:
    """Graph API calls over an httpx transport (`Http11Transport` unless told otherwise).

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
        self._transport = transport if transport is not None else Http11Transport(max_connections)
        # Our own transport is called without httpx's objects, unless a subclass changed how it sends.
        direct = type(self._transport).handle_async_request is Http11Transport.handle_async_request
        self._default_number = settings.phone_number_id
        token = _access_token(settings)
        register_secrets([token])  # scrub_text (error texts, logs) then removes it whatever its shape
        self._auth = ("authorization", f"Bearer {token}")
        self._timeout = httpx.Timeout(settings.timeout_seconds).as_dict()
        # The transport to call directly, with its timeout built once; None: through httpx's objects.
        self._direct: tuple[Http11Transport, Timeouts] | None = (
            (self._transport, self._transport.timeout(self._timeout))
            if direct and isinstance(self._transport, Http11Transport) else None
        )
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

    async def ready(self, phone_number_id: str) -> None:
        """Return when a `send_message` for the number, started with no await in between, writes at once.

        The sender checks Meta's rate window after this and before sending, so that the check is the
        moment the request leaves even when a connection must be opened first. A no-op on transports
        other than `Http11Transport`; a connection that cannot be opened is reported by the send.
        """
        if self._direct is not None:
            endpoint = self._endpoint("POST", self._number(phone_number_id), "messages")
            if endpoint.target is not None:
                await self._direct[0].ready(endpoint.target, self._direct[1])

    async def _post_message(self, number: str, payload: dict[str, Any]) -> SentMessage:
        endpoint = self._endpoint("POST", number, "messages")
        span = self._start_span(endpoint)
        try:
            status, content = await self._exchange(endpoint, orjson.dumps(payload), span)
            body = _success_body(status, content, endpoint.method)
            if payload.get("status") == "read":
                # Mark-as-read answers {"success": true}; its "message" is the one marked read.
                return _marked_read(body, payload["message_id"], status)
            wamid = _first(body, "messages", "id")
            if wamid is None:
                raise GraphApiError(
                    f"HTTP {status} without messages[0].id: Meta probably accepted the message",
                    error_class=ErrorClass.TRANSIENT,
                    http_status=status,
                    ambiguous=True,
                )
            if span.is_recording():  # the wamid holds the recipient's number: a reference only
                span.set_attribute("whatsapp.wamid_ref", wamid_ref(wamid))
            return SentMessage(wamid=wamid, wa_id=_first(body, "contacts", "wa_id"), http_status=status)
        except BaseException as exc:
            _record_failure(span, exc)
            raise
        finally:
            span.end()

    # --- health -----------------------------------------------------------------------------------

    async def check_health(self, phone_number_id: str | None = None) -> dict[str, Any]:
        """GET the phone number object: proves the token works and the number belongs to it.

        Returns Meta's object (`id`, `display_phone_number`, `verified_name`, …); raises
        `GraphApiError` (`AUTH` for a bad token, `INVALID` for a number it cannot see).
        """
        endpoint = self._endpoint("GET", self._number(phone_number_id), "")
        span = self._start_span(endpoint)
        try:
            status, content = await self._exchange(endpoint, None, span)
            return _success_body(status, content, endpoint.method)
        except BaseException as exc:
            _record_failure(span, exc)
            raise
        finally:
            span.end()

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
            normalised = httpx.Headers(headers)
            endpoint = self._endpoints[key] = _Endpoint(
                method=method,
                url=url,
                headers=normalised,
                target=self._direct[0].prepare(method, url, normalised.multi_items()) if self._direct else None,
                span_name=f"{method} /{{phone_number_id}}/{operation}".rstrip("/"),
                attributes={"http.request.method": method, "url.full": str(url), "server.address": url.host},
            )
        return endpoint

    def _start_span(self, endpoint: _Endpoint) -> Span:
        """The Graph API client span, carrying the outcome Meta's body told us (wamid, error code)."""
        return self._tracer.start_span(endpoint.span_name, kind=SpanKind.CLIENT, attributes=endpoint.attributes)

    async def _exchange(self, endpoint: _Endpoint, content: bytes | None, span: Span) -> tuple[int, bytes]:
        """A 2xx answer's status and body; any other answer, or none, raises `GraphApiError`."""
        # W3C traceparent of the client span, so the sandbox (or a proxy) can join the trace; not by
        # the propagator, which needs the span attached as the current context.
        traceparent = traceparent_of(span)
        try:
            if self._direct is not None and endpoint.target is not None:
                answer = await self._send_direct(*self._direct, endpoint.target, endpoint, content, traceparent)
                if 200 <= answer.status < 300 and not answer.encoded:
                    span.set_attribute("http.response.status_code", answer.status)
                    return answer.status, answer.body
                response = answer.response(self._request(endpoint, content, traceparent))  # decodes the body
            else:
                request = self._request(endpoint, content, traceparent)
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
        return response.status_code, response.content

    def _send_direct(
        self, transport: Http11Transport, timeouts: Timeouts, target: Target, endpoint: _Endpoint,
        content: bytes | None, traceparent: str | None,
    ) -> Coroutine[Any, Any, Answer]:
        # The headers `handle_async_request` would add to the target's (tests/whatsapp checks the wire).
        headers = []
        if content:
            headers.append(("content-length", str(len(content))))
        if traceparent is not None:
            headers.append(("traceparent", traceparent))
        return transport.send(target, headers, content, timeouts, lambda: self._request(endpoint, content, traceparent))

    def _request(self, endpoint: _Endpoint, content: bytes | None, traceparent: str | None) -> httpx.Request:
        request = httpx.Request(endpoint.method, endpoint.url, headers=endpoint.headers, content=content,
                                extensions={"timeout": self._timeout})
        if traceparent is not None:
            request.headers["traceparent"] = traceparent
        return request


def _record_failure(span: Span, exc: BaseException) -> None:
    if isinstance(exc, GraphApiError):
        if span.is_recording():
            span.set_attributes(_error_attributes(exc))
            span.set_status(Status(StatusCode.ERROR, exc.error_class.value))
    elif isinstance(exc, Exception):  # a bug, not an answer: still visible on the span
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def _access_token(settings: WhatsAppSettings) -> str:
    if settings.access_token is not None:
        return settings.access_token.get_secret_value()
    if settings.targets_meta:
        raise ValueError("access_token: WHATSAPP_ACCESS_TOKEN is required to call Meta's Graph API")
    return SANDBOX_ACCESS_TOKEN


def _success_body(status: int, content: bytes, method: str) -> dict[str, Any]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise GraphApiError(
            f"HTTP {status} with a body that is not a JSON object",
            error_class=ErrorClass.TRANSIENT,
            http_status=status,
            ambiguous=method == "POST",
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
