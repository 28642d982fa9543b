"""One send request on its way through the sender, from fetch to outcome.

    work = Work(request, number="106540352242922", origin=Origin(topic, 0, 42, key, headers, raw), received=now)

Times are monotonic seconds (the event loop's clock). `deadline` is the request's `expires_at`
converted once at intake, so that every later check is a float comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.context import Context
from opentelemetry.trace import Span

from pipeline.contracts import ErrorInfo, SendRequest
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

    @property
    def recipient(self) -> str:
        """The per-recipient order key: the phone number, or the BSUID of a request addressed by one."""
        return self.request.recipient_key
