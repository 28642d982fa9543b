"""One send request on its way through the sender, from fetch to outcome.

    work = Work(request, number="106540352242922", origin=Origin(topic, 0, 42, key, headers, raw), received=now)
    origin = Origin.of(record)                       # from a fetched record
    work = Work.start(request, number, origin, received=now, span=span, context=context, tracker=tracker, ttl=30.0)

Times are monotonic seconds (the event loop's clock). `deadline` is the request's `expires_at`
converted once at intake, so that every later check is a float comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span

from pipeline.contracts import CallbackData, ErrorInfo, SendRequest
from pipeline.observability.context import traceparent_of
from pipeline.sender.offsets import OffsetTracker


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: enough to commit it, dead-letter it or re-publish it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    value: bytes

    @classmethod
    def of(cls, record: Any) -> Origin:
        """From a fetched record (topic, partition, offset, key, value, headers: `intake.ConsumedRecord`)."""
        return cls(record.topic, record.partition, record.offset, record.key, tuple(record.headers or ()),
                   record.value or b"")


@dataclass(slots=True, eq=False)
class Work:
    request: SendRequest
    number: str  # the business phone_number_id that sends it (the request's, or the default)
    origin: Origin
    received: float  # monotonic time of intake
    deadline: float | None = None  # monotonic; from expires_at
    attempts: int = 0  # Graph API calls made
    charged: int = 0  # calls that count against retry_max_attempts (see retry.py)
    ambiguous_attempts: int = 0
    pair_strikes: int = 0  # consecutive 131056 answers for this request
    last_error: ErrorInfo | None = None
    span: Span | None = None  # the `process` span, ended when the outcome is recorded
    context: Context | None = None  # trace context in which the work's calls and publishes run
    traceparent: str | None = None
    callback_data: str = ""
    dispatched_at: float = 0.0
    tracker: OffsetTracker | None = field(default=None, repr=False)  # of the partition that owned it at intake

    @classmethod
    def start(
        cls, request: SendRequest, number: str, origin: Origin, *, received: float, span: Span, context: Context,
        tracker: OffsetTracker, ttl: float | None = None,
    ) -> Work:
        """A request taken in at `received`: its trace, the callback data Meta echoes, its deadline (`ttl` s on)."""
        traceparent = traceparent_of(span)
        callback = CallbackData(request_id=request.request_id, traceparent=traceparent, accepted_at=request.accepted_at)
        return cls(request, number, origin, received=received, span=span, context=context, traceparent=traceparent,
                   callback_data=callback.encode(), tracker=tracker,
                   deadline=received + ttl if ttl is not None else None)

    @property
    def recipient(self) -> str:
        """The per-recipient order key: the phone number, or the BSUID of a request addressed by one."""
        return self.request.recipient_key
