"""In-memory stand-ins for the engine's edges: Meta (a `MessageSender`), the outcome sink, records."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from opentelemetry import trace
from opentelemetry.context import Context

from pipeline.contracts import SendRequest
from pipeline.whatsapp import GraphApiError, SentMessage

Script = Callable[[SendRequest, int], GraphApiError | None]  # (request, call number for its id) -> error


@dataclass
class Call:
    request_id: str
    to: str
    phone_number_id: str | None
    callback_data: str | None
    trace_id: str


class FakeMeta:
    """Implements the client's `MessageSender` Protocol; `script` decides each answer."""

    def __init__(self, script: Script | None = None, latency: float = 0.01,
                 health: Callable[[], GraphApiError | None] | None = None, connect_seconds: float = 0.0) -> None:
        self.script = script or (lambda request, n: None)
        self.health = health or (lambda: None)  # the answer to the breaker's probe (GET of the number)
        self.health_checks: list[str] = []
        self.latency = latency
        self.connect_seconds = connect_seconds  # how long `ready` takes (a connection being opened)
        self.readied: list[float] = []  # monotonic times at which `ready` returned
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._per_request: dict[str, int] = {}
        self._ids = itertools.count()
        self._tracer = trace.get_tracer("tests.fake_meta")

    async def send_message(
        self, request: SendRequest, *, phone_number_id: str | None = None, callback_data: str | None = None
    ) -> SentMessage:
        # A client span, as the httpx instrumentation makes: it must land in the request's trace.
        with self._tracer.start_as_current_span("POST /messages") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            self.calls.append(Call(request.request_id, request.to or "", phone_number_id, callback_data, trace_id))
            n = self._per_request[request.request_id] = self._per_request.get(request.request_id, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.latency)
            finally:
                self.in_flight -= 1
            error = self.script(request, n)
            if error is not None:
                raise error
            return SentMessage(wamid=f"wamid.{next(self._ids)}", wa_id=(request.to or "").lstrip("+"), http_status=200)

    async def ready(self, phone_number_id: str) -> None:
        if self.connect_seconds:
            await asyncio.sleep(self.connect_seconds)
        self.readied.append(time.monotonic())

    async def check_health(self, phone_number_id: str | None = None) -> dict[str, Any]:
        self.health_checks.append(phone_number_id or "")
        await asyncio.sleep(self.latency)
        error = self.health()
        if error is not None:
            raise error
        return {"id": phone_number_id, "verified_name": "Fake"}

    def sent_ids(self) -> list[str]:
        return [c.request_id for c in self.calls]


@dataclass
class Published:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    def json(self) -> Any:
        return orjson.loads(self.value)

    def header(self, name: str) -> str | None:
        return next((v.decode() for k, v in self.headers if k == name), None)


@dataclass
class MemorySink:
    records: list[Published] = field(default_factory=list)
    fail_next: int = 0  # that many publishes time out first
    max_bytes: int | None = None  # like the producer's max_request_size: bigger records are refused

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]],
        *, context: Context | None = None, source_partition: int | None = None,
    ) -> None:
        await asyncio.sleep(0)
        if self.fail_next:
            self.fail_next -= 1
            raise KafkaTimeoutError("broker unavailable (fake)")
        size = len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if self.max_bytes is not None and size > self.max_bytes:
            raise MessageSizeTooLargeError(f"{len(value)} bytes (fake)")
        span = trace.get_current_span(context) if context is not None else None
        out = list(headers)
        if span is not None:
            ctx = span.get_span_context()
            out.append(("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01".encode()))
        self.records.append(Published(topic, key, value, out))

    def on(self, topic: str) -> list[Published]:
        return [r for r in self.records if r.topic == topic]


@dataclass
class Record:
    """The fields of an aiokafka ConsumerRecord the engine reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def request_bytes(to: str, request_id: str, body: str = "hi", **fields: Any) -> bytes:
    return orjson.dumps({"request_id": request_id, "to": to, "message": {"type": "text", "text": {"body": body}},
                         **fields})
