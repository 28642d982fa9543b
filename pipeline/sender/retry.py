"""What to do after a failed Graph API call: retry when, give up how, or stop the number.

    policy = RetryPolicy.from_settings(settings.sender)
    effects = policy.effects(error)                      # what the answer says about the number: pure
    effects.apply(now, work.recipient, limiter=lane.limiter, breaker=lane.breaker)
    judgement = policy.judge(work, error, now, circuit=lane.breaker.state)   # pure: reads `work`, never writes it
    judgement.apply_to(work)                             # its charge, pair strike and last error
    judgement.verdict                                    # Retry(delay=1.7) · Hold() · Park(60.0) · Terminal(…)
    verdict = policy.settle(work, error, now, limiter=lane.limiter, breaker=lane.breaker)   # the four lines above

`effects` and `judge` change nothing: the effects on the number's breaker and limiter and on the
work are values, and whoever applies them (`settle`, called by the attempt step) does so in the
open. `judge` needs the circuit's state *after* the answer's evidence is in (a service failure may
just have opened it), so the effects are applied before it is asked.

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


@dataclass(frozen=True, slots=True)
class Effects:
    """What one failed call does to its number: breaker evidence and the limiter's pace (a value)."""

    failure: Scope | None = None  # breaker.record_failure(scope): transient
    success: bool = False  # breaker.record_success: Meta answered with a verdict on this request
    block: ErrorClass | None = None  # breaker.block: auth / policy
    throttle: bool = False  # limiter.throttled: 130429
    pause: float = 0.0  # limiter.pause(seconds): 4 / 80007 / 131048

    def apply(self, now: float, recipient: str, *, limiter: RateLimiter, breaker: CircuitBreaker) -> None:
        if self.failure is not None:
            breaker.record_failure(now, recipient, self.failure)
        if self.block is not None:
            breaker.block(now, self.block)
        if self.success:
            breaker.record_success(now, recipient)
        if self.pause > 0.0:
            limiter.pause(now, self.pause)
        if self.throttle:
            limiter.throttled(now)


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdict on one request, and what it changes of that request (applied by `apply_to`)."""

    verdict: Verdict
    charge: bool = False  # one more charged attempt (work.charged)
    pair_strike: bool = False  # one more consecutive 131056 (work.pair_strikes)
    error: ErrorInfo | None = None  # the request's last error from now on (work.last_error)

    def apply_to(self, work: Work) -> None:
        if self.error is not None:
            work.last_error = self.error
        if self.charge:
            work.charged += 1
        if self.pair_strike:
            work.pair_strikes += 1

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

    def effects(self, error: GraphApiError) -> Effects:
        """What this answer does to the number's breaker and limiter (pure)."""
        cls = error.error_class
        if cls is ErrorClass.TRANSIENT:
            return Effects(failure=scope_of(error))
        if cls in _BLOCKING:
            return Effects(block=cls)
        # Meta answered with a verdict on this request: it is up, whatever the verdict.
        if cls is ErrorClass.THROTTLED:
            if error.code in NUMBER_PAUSE_CODES:
                return Effects(success=True, pause=self._pause_of(error))
            return Effects(success=True, throttle=True)
        return Effects(success=True)

    def judge(self, work: Work, error: GraphApiError, now: float, *, circuit: CircuitState) -> Judgement:
        """The verdict on one failed call, given the circuit's state once `effects(error)` is applied (pure)."""
        info = error.to_error_info()
        cls = error.error_class
        if cls is ErrorClass.TRANSIENT:
            if error.ambiguous and not self.retry_ambiguous:
                return Judgement(Park(self.ambiguous_window), error=info)  # Meta's status webhooks will tell
            service = scope_of(error) is Scope.SERVICE
            if circuit is CircuitState.OPEN or (service and circuit is not CircuitState.CLOSED):
                return self._retry(work, info, 0.0, now, charge=False)  # Meta is down: the breaker decides when
            # A recipient-scoped failure while the number is up is this recipient's: it backs off on its
            # own and is charged.
            return self._retry(work, info, self.backoff(work.charged + 1), now)
        if cls in _BLOCKING:
            return Judgement(Hold(), error=info)
        if cls is ErrorClass.THROTTLED:
            if error.code in NUMBER_PAUSE_CODES:
                return self._retry(work, info, self._pause_of(error), now)
            return self._retry(work, info, max(self.backoff(work.charged + 1), error.retry_after or 0.0), now)
        if cls is ErrorClass.PAIR_LIMITED:
            growing = self.pair_interval * 2 ** work.pair_strikes  # 2^(strikes - 1), this one counted
            delay = min(self.max_delay, max(growing, error.retry_after or 0.0))
            retry = self._retry(work, info, delay * (1.0 + 0.1 * self.rng.random()), now)
            return Judgement(retry.verdict, charge=retry.charge, pair_strike=True, error=info)
        if cls is ErrorClass.INVALID:
            rejected = Terminal(MessageOutcome.DEAD_LETTERED, info, DeadLetterReason.PAYLOAD_REJECTED)
            return Judgement(rejected, error=info)
        return Judgement(Terminal(MessageOutcome.FAILED, info), error=info)

    def settle(
        self, work: Work, error: GraphApiError, now: float, *, limiter: RateLimiter, breaker: CircuitBreaker
    ) -> Verdict:
        """Apply the answer's effects to the number, judge, apply the judgement to the work: the verdict."""
        self.effects(error).apply(now, work.recipient, limiter=limiter, breaker=breaker)
        judgement = self.judge(work, error, now, circuit=breaker.state)
        judgement.apply_to(work)
        return judgement.verdict

    def unsent(self, work: Work, now: float, *, circuit: CircuitState) -> Judgement:
        """A parked request whose window passed without a status: it was not sent, so it goes again (pure)."""
        if circuit is not CircuitState.CLOSED:
            return self._retry(work, None, 0.0, now, charge=False)  # Meta is down: the breaker decides when
        return self._retry(work, None, self.backoff(work.charged + 1), now)

    def _pause_of(self, error: GraphApiError) -> float:
        return max(error.retry_after or 60.0, self.base_delay)

    def _retry(
        self, work: Work, info: ErrorInfo | None, delay: float, now: float, *, charge: bool = True
    ) -> Judgement:
        last_error = info if info is not None else work.last_error
        if charge and work.charged + 1 >= self.max_attempts:
            return Judgement(Terminal(MessageOutcome.FAILED, last_error), charge=True, error=info)
        if work.deadline is not None and now + delay >= work.deadline:
            return Judgement(Terminal(MessageOutcome.EXPIRED, last_error), charge=charge, error=info)
        return Judgement(Retry(delay), charge=charge, error=info)
