"""Pure decisions of delivery: what an answer means, how long to wait, whether an endpoint may be called.

    verdict = judge(status=503, retry_after="7")       # Verdict(result=SERVER_ERROR, retry=True, after=7.0)
    delay = backoff.delay(attempt=3, retry_after=verdict.after, rng=random.random)
    breaker.allow(now); breaker.record(success, now)   # per endpoint

No I/O and no clock of their own (the caller passes `now`), so tests drive them through time.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.contracts.vocabulary import CallbackAttemptResult, CircuitState

R = CallbackAttemptResult


@dataclass(frozen=True, slots=True)
class Verdict:
    result: CallbackAttemptResult
    retry: bool  # False: delivered (success) or never again (gone)
    after: float | None = None  # the endpoint's Retry-After, in seconds
    breaker_failure: bool = False  # counts towards opening the endpoint's breaker


_DELIVERED = Verdict(R.SUCCESS, retry=False)


def judge(status: int | None, retry_after: str | None = None, *, timed_out: bool = False) -> Verdict:
    """What one attempt's answer means. `status` None: no HTTP answer (refused, reset, timed out)."""
    if status is None:
        return Verdict(R.TIMEOUT if timed_out else R.CONNECT_ERROR, retry=True, breaker_failure=True)
    if 200 <= status < 300:
        return _DELIVERED
    if status == 410:
        return Verdict(R.GONE, retry=False)
    after = parse_retry_after(retry_after)
    if status in (408, 429):
        return Verdict(R.THROTTLED, retry=True, after=after, breaker_failure=True)
    if status >= 500:
        return Verdict(R.SERVER_ERROR, retry=True, after=after, breaker_failure=True)
    if 300 <= status < 400:
        return Verdict(R.REDIRECT, retry=True, after=after)  # a misconfigured URL, perhaps fixed soon
    # 4xx: the receiver is up but refused this call (a bug on its side, or a secret being rotated);
    # retried like the rest, without opening the breaker: other events may well be accepted.
    return Verdict(R.CLIENT_ERROR, retry=True, after=after)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so retries spread out
    without ever retrying at once; a Retry-After longer than that wins (capped by `retry_after_cap`)."""

    base: float
    cap: float
    retry_after_cap: float = 3600.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: Callable[[], float] = lambda: 1.0) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 = the first)."""
        step: float = min(self.cap, self.base * 2.0 ** min(attempt - 1, 30))
        wait = step / 2 + rng() * step / 2
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_cap))
        return wait


class Breaker:
    """A per-endpoint circuit breaker: `failures` consecutive failures open it for `reset_seconds`
    (or the endpoint's Retry-After, if longer); then one probe (half-open) closes or re-opens it.

    Written here rather than taken from a library: it must take `now` from the caller (tests, one
    clock for all endpoints) and feed a gauge; the logic is twenty lines.
    """

    __slots__ = ("_failures", "_opened_until", "_probing", "failures", "reset_seconds", "state")

    def __init__(self, failures: int, reset_seconds: float) -> None:
        self.failures = failures
        self.reset_seconds = reset_seconds
        self.state = CircuitState.CLOSED
        self._failures = 0
        self._opened_until = 0.0
        self._probing = False

    def allow(self, now: float) -> bool:
        """May a new attempt start now? In half-open state, only one (the probe) at a time."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if now < self._opened_until:
                return False
            self.state = CircuitState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def reopens_at(self) -> float:
        return self._opened_until

    def record(self, failure: bool, now: float, retry_after: float | None = None) -> None:
        if not failure:
            self.state = CircuitState.CLOSED
            self._failures = 0
            self._probing = False
            return
        self._failures += 1
        if self.state is CircuitState.HALF_OPEN or self._failures >= self.failures:
            self.state = CircuitState.OPEN
            self._probing = False
            self._opened_until = now + max(self.reset_seconds, retry_after or 0.0)
