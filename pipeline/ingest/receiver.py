"""The webhook endpoint Meta posts to: verify, store durably in `webhooks.raw`, and only then say 200.

    writer = RawWebhookWriter(settings, topics.webhooks_raw)
    await writer.start()                      # connects in the background; 503 until Kafka answers
    app = WebhookApp(settings, writer, tracer, ready=writer.ready)
    # uvicorn serves `app`: POST/GET /webhooks/whatsapp, /metrics, /healthz, /readyz

POST answers: 200 once the raw body is acknowledged by Kafka (acks=all); 401 for a missing or wrong
`X-Hub-Signature-256` (nothing is stored); 413 above `max_body_bytes`; 503 when Kafka does not take
the body within `produce_timeout_seconds`, so Meta retries later. Parsing happens downstream: the
request path only hashes and produces, which keeps it fast under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pipeline.config import Settings, SettingsError
from pipeline.contracts import WebhookOutcome
from pipeline.ingest.signature import signature_matches
from pipeline.observability import get_logger, ops_routes
from pipeline.observability.context import context_from_traceparent, traceparent_header
from pipeline.observability.metrics import WEBHOOKS
from pipeline.produce_guard import leaders_reachable, request_timeout_ms, withdraw
from pipeline.topics import partition_for

log = get_logger(__name__)

PATH = "/webhooks/whatsapp"
SIGNATURE_HEADER = "x-hub-signature-256"
_CONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# One counter child per outcome, looked up once: `labels()` costs a lock and a dict per call, and
# every POST counts. Created on first use, so an outcome that never happened has no series.
_OUTCOMES: dict[WebhookOutcome, Any] = {}


def _count(outcome: WebhookOutcome) -> None:
    child = _OUTCOMES.get(outcome)
    if child is None:
        child = _OUTCOMES[outcome] = WEBHOOKS.labels(outcome=outcome)
    child.inc()


def partition_of(key: bytes | None, partitions: list[int]) -> int:
    """The partition a raw webhook goes to: the project's partitioner (`topics.partition_for`, the one
    every stage uses) over the partitions the producer knows. The receiver writes bodies unkeyed (it
    does not parse them), so today this spreads them at random, as Kafka's default would."""
    return partitions[partition_for(key, len(partitions))]


def app_secret_of(settings: Settings) -> bytes:
    secret = settings.whatsapp.app_secret
    if secret is None:
        raise SettingsError([("WHATSAPP_APP_SECRET", "required by the ingest to verify X-Hub-Signature-256")])
    return secret.get_secret_value().encode()


class RawWebhookWriter:
    """Produces verified bodies to `webhooks.raw`; `write` says False when Kafka cannot take one in time.

    While Kafka is unreachable, one request at a time probes it (waiting up to the timeout) and the
    others get False at once: Meta retries either way, and a pile of requests each holding a
    connection for the whole timeout would only add load when Kafka comes back.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self._settings = settings
        self.topic = topic
        self.timeout = settings.ingest.produce_timeout_seconds
        self.producer: AIOKafkaProducer | None = None
        self._down = False
        self._probing = False
        self._connecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect())

    def ready(self) -> bool:
        return self.producer is not None and not self._down

    async def wait_connected(self, seconds: float) -> bool:
        """Give the first connection a moment before listening, so a fresh start does not answer 503."""
        if self._connecting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._connecting), seconds)
        return self.producer is not None

    async def _connect(self) -> None:
        attempt = 0
        while True:
            producer = AIOKafkaProducer(
                **self._settings.kafka.client_kwargs(),
                enable_idempotence=True,  # acks=all; a retried batch is written once
                linger_ms=0,
                # One batch per partition is in flight at a time (idempotence): records arriving
                # meanwhile wait in the next batch, which must hold a busy moment's worth, or each
                # sender waits for the drain in turn (aiokafka's default of 16 KiB did exactly that).
                max_batch_size=1024 * 1024,
                max_request_size=max(1024 * 1024, self._settings.ingest.max_body_bytes + 64 * 1024),
                # Meta's bodies may reach 3 MB (the topic takes 4 MiB uncompressed). lz4 (cramjam, aiokafka's
                # codec extra) over aiokafka's gzip, which runs at level 9: ~13 µs against ~54 µs to compress
                # a 1.2 KB webhook, ~5 against ~12 µs to read it back; 2-3 % of the ingest's CPU per POST
                # at 1 status per POST (BENCHMARKS.md, "Status ingest").
                compression_type="lz4",
                request_timeout_ms=request_timeout_ms(self.timeout),  # never expire a batch (produce_guard)
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                delay = _CONNECT_BACKOFF[min(attempt, len(_CONNECT_BACKOFF) - 1)]
                log.warning("kafka_unreachable", retry_in_s=delay, error=str(exc))
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self.producer = producer
            log.info("webhook_writer_connected", topic=self.topic)
            return

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.producer is not None:
            await self.producer.stop()  # flushes what is still buffered

    async def write(self, body: bytes, headers: list[tuple[str, bytes]]) -> bool:
        producer = self.producer
        if producer is None or (self._down and self._probing):
            return False
        probe = self._down
        self._probing = self._probing or probe
        future = None
        try:
            async with asyncio.timeout(self.timeout):
                # A 503 should mean "not written": hand the body over only while its partition's
                # leader is connected, and take it back on the deadline if it was not sent yet.
                partition = partition_of(None, sorted(await producer.partitions_for(self.topic)))
                if not await leaders_reachable(producer, self.topic, [partition]):
                    raise KafkaConnectionError("no connection to the partition's leader")
                future = await producer.send(self.topic, body, headers=headers, partition=partition)
                # Shielded: a timeout must not cancel a record already sent; if it lands later,
                # Meta's retry becomes a duplicate that the state processor drops.
                await asyncio.shield(future)
        except (TimeoutError, KafkaError) as exc:
            if future is not None and not future.done():
                withdraw(producer, [future])
            if not self._down:
                log.error("webhook_not_stored", error=str(exc) or type(exc).__name__)
            self._down = True
            return False
        finally:
            if probe:
                self._probing = False
        if self._down:
            log.info("webhook_writer_recovered")
        self._down = False
        return True


class WebhookApp:
    """ASGI app: the POST path is served directly, everything else by a small Starlette app.

    Why not a Starlette route with the OpenTelemetry ASGI middleware like the other stages: measured on
    this machine, that stack spent about twice the CPU per webhook (≈ 450 µs against ≈ 230 µs with this
    path and a hand-made server span), and this endpoint must take thousands of webhooks a second.
    """

    def __init__(
        self,
        settings: Settings,
        writer: RawWebhookWriter,
        tracer: Tracer,
        ready: Callable[[], bool | Awaitable[bool]],
        details: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._secret = app_secret_of(settings)
        token = settings.whatsapp.webhook_token
        self._verify_token = token.get_secret_value().encode() if token is not None else None
        self._max_body = settings.ingest.max_body_bytes
        self._writer = writer
        self._tracer = tracer
        self._other = Starlette(routes=[Route(PATH, self._verify, methods=["GET"]), *ops_routes(ready, details)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PATH:
            await self._post(scope, receive, send)
        else:
            await self._other(scope, receive, send)

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        length, signature, traceparent = _headers(scope)
        with self._tracer.start_as_current_span(
            f"POST {PATH}",
            context=context_from_traceparent(traceparent),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": PATH, "url.path": PATH},
        ) as span:
            try:
                status = await self._answer(length, signature, receive, traceparent_header(span), _peer(scope))
            except ClientGone:
                span.set_attribute("http.request.aborted", True)
                return
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            await _respond(send, status)

    async def _answer(
        self, length: int | None, signature: bytes | None, receive: Receive, traceparent: bytes | None,
        peer: str = "",
    ) -> int:
        if length is not None and length > self._max_body:
            _count(WebhookOutcome.MALFORMED)
            return 413
        body = await _read_body(receive, self._max_body)
        if body is None:
            _count(WebhookOutcome.MALFORMED)
            return 413
        if not signature_matches(self._secret, body, signature):
            _count(WebhookOutcome.BAD_SIGNATURE)
            # A warning: either someone other than Meta posts here, or our app secret is not Meta's.
            log.warning(
                "webhook_rejected", reason="missing signature" if not signature else "bad signature", source=peer
            )
            return 401
        headers = [
            (SIGNATURE_HEADER, signature or b""),
            ("received-at", datetime.now(UTC).isoformat().encode()),
            ("content-type", b"application/json"),
        ]
        if traceparent:
            headers.append(("traceparent", traceparent))
        if not await self._writer.write(body, headers):
            _count(WebhookOutcome.UNAVAILABLE)
            return 503
        _count(WebhookOutcome.ACCEPTED)
        return 200

    async def _verify(self, request: Request) -> Response:
        """Meta's subscription check: echo `hub.challenge` when `hub.verify_token` is ours."""
        params = request.query_params
        given = params.get("hub.verify_token", "").encode()
        challenge = params.get("hub.challenge")
        if (
            params.get("hub.mode") == "subscribe"
            and self._verify_token is not None
            and hmac.compare_digest(given, self._verify_token)
            and challenge is not None
        ):
            _count(WebhookOutcome.VERIFIED)
            return PlainTextResponse(challenge)
        _count(WebhookOutcome.VERIFY_FAILED)
        log.warning("webhook_verification_failed", mode=params.get("hub.mode"), source=_peer(request.scope))
        return PlainTextResponse("verification failed", status_code=403)


class ClientGone(Exception):
    """The client hung up before sending the whole body: nothing to verify, store or answer."""


def _peer(scope: Scope) -> str:
    """The source address. uvicorn has already replaced a trusted proxy's address by the client's from
    X-Forwarded-For (`forwarded_allow_ips`); an untrusted peer's header is ignored."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def _headers(scope: Scope) -> tuple[int | None, bytes | None, bytes | None]:
    length: int | None = None
    signature: bytes | None = None
    traceparent: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                length = int(value)
        elif name == b"x-hub-signature-256":
            signature = value
        elif name == b"traceparent":
            traceparent = value
    return length, signature, traceparent


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds `limit` (chunked bodies have no Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


_REASONS = {200: b"ok", 401: b"invalid signature", 413: b"body too large", 503: b"try again later"}


def _response_start(status: int) -> dict[str, Any]:
    body = _REASONS.get(status, b"")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"5"))
    return {"type": "http.response.start", "status": status, "headers": headers}


# Built once: the answers are constant, and the server only reads these messages.
_ANSWERS = {status: (_response_start(status), {"type": "http.response.body", "body": body})
            for status, body in _REASONS.items()}


async def _respond(send: Send, status: int) -> None:
    start, body = _ANSWERS.get(status) or (_response_start(status), {"type": "http.response.body", "body": b""})
    await send(start)
    await send(body)
