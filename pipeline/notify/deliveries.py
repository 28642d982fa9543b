"""What the delivery code passes around: records, deliveries, answers, and the I/O it is given.

    source = Source(topic, partition, offset, timestamp, key, value, lease=lease)
    delivery = Delivery(event, event.body(), source, subscription)
    answer = await poster.post(delivery)          # Answer(status=200) / Answer(None, error="…")

`Poster`, `DeadLetters` and `DeliveryHooks` are the seams: HTTP (http.py), Kafka (service.py) and
metrics (telemetry.py) in the stage, scripted fakes in tests/notify/test_delivery.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from pipeline.contracts.vocabulary import CallbackAttemptResult, CallbackOutcome, CircuitState, DeadLetterReason
from pipeline.notify.events import CallbackEvent
from pipeline.notify.policy import Backoff
from pipeline.notify.settings import NotifySettings, Subscription


@dataclass(slots=True, eq=False)
class Lease:
    """A partition held by this process; `alive` turns False when it is revoked."""

    alive: bool = True


_ALWAYS = Lease()


@dataclass(slots=True, eq=False)
class Source:
    """One consumed record and how many of its deliveries are still open."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # the record's Kafka timestamp (epoch seconds): the event's age counts from here
    key: bytes | None
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)
    pending: int = 0
    lease: Lease = _ALWAYS  # once revoked, its deliveries are dropped, not sent: the new owner sends them


@dataclass(slots=True, eq=False)
class Delivery:
    event: CallbackEvent
    body: bytes
    source: Source
    subscription: Subscription
    hold_until: float = 0.0  # monotonic: a status waiting for its send result
    not_before: float = 0.0  # monotonic: backoff
    attempts: int = 0
    last_answer: str = "no attempt yet"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST got: an HTTP status, or none (`error` says why)."""

    status: int | None
    retry_after: str | None = None
    body: str = ""
    timed_out: bool = False
    error: str | None = None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer: {self.error or 'connection failed'}"
        return f"HTTP {self.status}" + (f": {self.body}" if self.body else "")


class Poster(Protocol):
    async def post(self, delivery: Delivery) -> Answer: ...


class DeadLetters(Protocol):
    async def dead_letter(self, delivery: Delivery, reason: DeadLetterReason) -> None:
        """Return once the dead letter is durable (retrying as long as it takes)."""


class DeliveryHooks(Protocol):
    """Telemetry of deliveries (pipeline/notify/telemetry.py); `endpoint` is a URL origin from settings."""

    def attempted(self, endpoint: str, result: CallbackAttemptResult, seconds: float) -> None: ...
    def retried(self, endpoint: str) -> None: ...
    def finished(self, endpoint: str, outcome: CallbackOutcome, reason: DeadLetterReason | None) -> None: ...
    def breaker(self, endpoint: str, state: CircuitState) -> None: ...
    def backlog(self, endpoint: str, depth: int, oldest_age_seconds: float) -> None: ...
    def disabled(self, endpoint: str) -> None: ...


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    max_attempts: int
    max_age_seconds: float
    backoff: Backoff
    breaker_failures: int
    breaker_reset_seconds: float
    concurrency: int
    queue_limit: int
    max_buffered: int
    order_hold_seconds: float

    @classmethod
    def of(cls, notify: NotifySettings) -> DeliveryConfig:
        return cls(
            max_attempts=notify.max_attempts,
            max_age_seconds=notify.max_age_seconds,
            backoff=Backoff(notify.retry_base_seconds, notify.retry_max_seconds),
            breaker_failures=notify.breaker_failures,
            breaker_reset_seconds=notify.breaker_reset_seconds,
            concurrency=notify.concurrency_per_endpoint,
            queue_limit=notify.endpoint_queue_limit,
            max_buffered=notify.max_buffered,
            order_hold_seconds=notify.order_hold_seconds,
        )
