"""What to do after a failed Graph API call: retry when, give up how, or stop the number.

    policy = RetryPolicy.from_settings(settings.sender)
    verdict = policy.judge(work, error, now, limiter=lane.limiter, breaker=lane.breaker)
    # Retry(delay=1.7) · Hold() · Terminal(MessageOutcome.FAILED, error_info) · Terminal(EXPIRED, …)

The table (error classes from `pipeline.whatsapp.classify`):

| class | effect on the number / recipient | this request |
|---|---|---|
| transient (5xx, timeouts, 1, 2, 131000, …) | breaker failure (service or recipient) | backoff |
| transient, ambiguous (sent, then no answer) | breaker failure | `Park(window)`: its status decides |
| throttled 130429 | rate x `decrease` (AIMD) | retry with backoff |
| throttled 4, 80007, 131048 | number paused for `retry_after` (60 s / 300 s) | retry after it |
| pair_limited 131056 | only this recipient waits: 6 s, 12 s, 24 s, … | retry after it |
| auth 0/190, policy 368/131031 | number blocked (breaker, `NUMBER_BLOCKED`) | held first in its queue, not charged |
| invalid 100, 131008, … | | dead letter (`payload_rejected`): our payload is wrong |
| everything else | | failed |

Retries are bounded by `max_attempts` *charged* attempts and by the request's deadline (a retry that
would start after `expires_at` ends as `expired` at once). A transient failure is not charged when
it is a service failure that leaves the breaker open: then Meta is down, the breaker holds the
work, and a long outage must not exhaust anyone's budget. A recipient-scoped failure (131000) is
always charged: that recipient backs off on its own, bounded by `max_attempts` and its expiry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.config import SenderSettings
from pipeline.contracts import CircuitState, DeadLetterReason, ErrorClass, ErrorInfo, MessageOutcome
from pipeline.contracts.meta_errors import NUMBER_PAUSE_CODES
from pipeline.sender.breaker import CircuitBreaker, Scope, scope_of
from pipeline.sender.limits import RateLimiter
from pipeline.sender.work import Work
from pipeline.whatsapp import GraphApiError


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float  # seconds before this request (and so its recipient) may go again


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep the request at the head of its queue: the number is stopped, not the request."""


@dataclass(frozen=True, slots=True)
class Park:
    """The call may have sent the message: wait up to `window` s for its status (ambiguous.py), then decide."""

    window: float


@dataclass(frozen=True, slots=True)
class Terminal:
    outcome: MessageOutcome
    error: ErrorInfo | None = None
    reason: DeadLetterReason | None = None  # for DEAD_LETTERED


Verdict = Retry | Hold | Park | Terminal

_BLOCKING = frozenset({ErrorClass.AUTH, ErrorClass.POLICY})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 300.0
    pair_interval: float = 6.0
    retry_ambiguous: bool = False
    ambiguous_window: float = 60.0
    rng: random.Random = random.Random()  # noqa: RUF009 — one shared generator; tests pass a seeded one

    @classmethod
    def from_settings(cls, sender: SenderSettings, rng: random.Random | None = None) -> RetryPolicy:
        return cls(
            max_attempts=sender.retry_max_attempts,
            base_delay=sender.retry_base_delay_seconds,
            max_delay=sender.retry_max_delay_seconds,
            pair_interval=sender.pair_interval_seconds,
            retry_ambiguous=sender.retry_ambiguous,
            ambiguous_window=sender.ambiguous_window_seconds,
            rng=rng or random.Random(),
        )

    def backoff(self, charged: int) -> float:
        """Exponential with jitter: base x 2^(n-1), capped, then drawn from its upper half."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(0, charged - 1))
        return ceiling * (0.5 + 0.5 * self.rng.random())

    def judge(
        self, work: Work, error: GraphApiError, now: float, *, limiter: RateLimiter, breaker: CircuitBreaker
    ) -> Verdict:
        """Classify one failed call, feeding the number's limiter and breaker on the way."""
        info = error.to_error_info()
        work.last_error = info
        cls = error.error_class
        if cls is ErrorClass.TRANSIENT:
            scope = scope_of(error)
            breaker.record_failure(now, work.recipient, scope)
            if error.ambiguous and not self.retry_ambiguous:
                return Park(self.ambiguous_window)  # Meta's status webhooks will tell; never guessed
            state = breaker.state
            if state is CircuitState.OPEN or (scope is Scope.SERVICE and state is not CircuitState.CLOSED):
                return self._retry(work, 0.0, now, charge=False)  # Meta is down: the breaker decides when
            # A recipient-scoped failure while the number is up is this recipient's: it backs off on its
            # own and is charged.
            return self._retry(work, self.backoff(work.charged + 1), now)
        if cls in _BLOCKING:
            breaker.block(now, cls)
            return Hold()
        # Meta answered with a verdict on this request: it is up, whatever the verdict.
        breaker.record_success(now, work.recipient)
        if cls is ErrorClass.THROTTLED:
            if error.code in NUMBER_PAUSE_CODES:
                wait = max(error.retry_after or 60.0, self.base_delay)
                limiter.pause(now, wait)
                return self._retry(work, wait, now)
            limiter.throttled(now)
            return self._retry(work, max(self.backoff(work.charged + 1), error.retry_after or 0.0), now)
        if cls is ErrorClass.PAIR_LIMITED:
            work.pair_strikes += 1
            growing = self.pair_interval * 2 ** (work.pair_strikes - 1)
            delay = min(self.max_delay, max(growing, error.retry_after or 0.0))
            return self._retry(work, delay * (1.0 + 0.1 * self.rng.random()), now)
        if cls is ErrorClass.INVALID:
            return Terminal(MessageOutcome.DEAD_LETTERED, info, DeadLetterReason.PAYLOAD_REJECTED)
        return Terminal(MessageOutcome.FAILED, info)

    def unsent(self, work: Work, now: float, *, breaker: CircuitBreaker) -> Retry | Terminal:
        """A parked request whose window passed without a status: it was not sent, so it goes again."""
        if breaker.state is not CircuitState.CLOSED:
            return self._retry(work, 0.0, now, charge=False)  # Meta is down: the breaker decides when
        return self._retry(work, self.backoff(work.charged + 1), now)

    def _retry(self, work: Work, delay: float, now: float, *, charge: bool = True) -> Retry | Terminal:
        if charge:
            work.charged += 1
            if work.charged >= self.max_attempts:
                return Terminal(MessageOutcome.FAILED, work.last_error)
        if work.deadline is not None and now + delay >= work.deadline:
            return Terminal(MessageOutcome.EXPIRED, work.last_error)
        return Retry(delay)
