"""A circuit breaker per business number: stop calling Meta when *Meta or the number* is down.

    breaker = CircuitBreaker(threshold=5, reset_seconds=60.0, on_change=listener)
    wait = breaker.admit(now, in_flight=lane_in_flight)  # 0.0 go · >0 seconds · inf: until a call/probe returns
    breaker.take_probe(now)                              # True: start the health probe now (GET the number)
    breaker.record_success(now, recipient)
    breaker.record_failure(now, recipient, Scope.SERVICE)  # or Scope.RECIPIENT (see `scope_of`)
    breaker.block(now, ErrorClass.AUTH)
    breaker.probe_succeeded(now) / breaker.probe_failed(now, error_class)

One bad recipient must never stop a number, and a real outage must stop it as fast as before. The
breaker tells them apart with two kinds of evidence (docs/sender.md, "Circuit breaker"):

* **Service failures** (`Scope.SERVICE`): no HTTP answer at all (connection refused, disconnect,
  timeout), a 5xx without Meta's error code, or a code Meta documents as its own (1, 2, 131016,
  131057). Nothing about them is specific to a recipient. `threshold` consecutive ones, from at
  least `min(threshold, 3)` distinct recipients, open the circuit at once (OPEN, reason
  `service_failures`). After k consecutive ones at most `threshold - k` calls may be in flight
  ("suspect"), so at most `threshold` failures reach Meta before it opens, however many were queued.
* **Recipient failures** (`Scope.RECIPIENT`): the other transient codes, 131000 "something went
  wrong" above all, which Meta also returns for single recipients while the rest of a number's
  traffic flows. A recipient that failed is remembered as *failing*; its further failures are no
  new evidence (its own backoff deals with it) and are not counted at all. Fresh failures and all
  successes go into a sliding window of `window_seconds`: when it holds at least `min_calls`
  answers, at least `min_recipients` distinct failing recipients and a failure ratio of at least
  `failure_ratio`, the breaker goes HALF_OPEN at once (reason `failure_ratio`) and asks for a probe.

**Probes** are never messages: `take_probe` asks the engine for Meta's health call for the number
(a GET of the phone number object, `WhatsAppClient.check_health`). It cannot fail because of a
recipient and cannot send anything twice. Success closes the circuit *on trial*: one call at a time
until a message succeeds (the GET proves Meta answers, a message proves it sends). Failure re-opens
it for `reset_seconds` (reason `probe_failed`): at most one probe per reset interval.

**Blocked**: auth (0, 190) and policy (368, 131031) errors stop the number like an open breaker
whose probe interval is `blocked_probe_seconds`; an operator must act, and the probe notices.

Answers of calls admitted before the breaker left CLOSED say nothing about now: while OPEN or
HALF_OPEN only the probe decides.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.contracts import CircuitReason, CircuitState, ErrorClass
from pipeline.whatsapp import GraphApiError

# Codes Meta documents as its own trouble, not the recipient's: unknown API error, service
# unavailable, "service unavailable" for messages, business account in maintenance.
SERVICE_CODES = frozenset({1, 2, 131016, 131057})
_FAILING_MEMORY = 50_000  # recipients remembered as failing (oldest forgotten first)


class Scope(StrEnum):
    SERVICE = "service"  # says Meta or the number is in trouble
    RECIPIENT = "recipient"  # may concern this recipient only


def scope_of(error: GraphApiError) -> Scope:
    """Which evidence a transient failure is: no answer or a service code is Meta's; the rest may be one recipient's."""
    if error.code is not None:  # Meta's own body answered
        return Scope.SERVICE if error.code in SERVICE_CODES else Scope.RECIPIENT
    if error.http_status is None or error.http_status >= 500:
        return Scope.SERVICE  # no answer, or a 5xx without Meta's body (a proxy or load balancer in front)
    return Scope.RECIPIENT


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """What the listener hears: the new state, why, and the evidence (for the log line and the metric)."""

    state: CircuitState
    reason: CircuitReason
    blocked: ErrorClass | None = None
    evidence: dict[str, float | int | str] = field(default_factory=dict)


ChangeListener = Callable[[CircuitChange], None]


class CircuitBreaker:
    __slots__ = (
        "_failing",
        "_listener",
        "_opened_at",
        "_probe_out",
        "_run_recipients",
        "_window",
        "_window_failures",
        "blocked",
        "blocked_probe_seconds",
        "failure_ratio",
        "failures",
        "min_calls",
        "min_recipients",
        "recipient_memory_seconds",
        "reset_seconds",
        "state",
        "threshold",
        "trial",
        "window_seconds",
    )

    def __init__(
        self,
        threshold: int = 5,
        reset_seconds: float = 60.0,
        *,
        blocked_probe_seconds: float = 300.0,
        failure_ratio: float = 0.5,
        min_calls: int = 20,
        min_recipients: int = 5,
        window_seconds: float = 10.0,
        recipient_memory_seconds: float = 600.0,
        on_change: ChangeListener | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold: must be >= 1 consecutive failures; got {threshold}")
        if not 0.0 < failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio: must be in (0, 1]; got {failure_ratio}")
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.blocked_probe_seconds = blocked_probe_seconds
        self.failure_ratio = failure_ratio
        self.min_calls = max(1, min_calls)
        self.min_recipients = max(1, min_recipients)
        self.window_seconds = window_seconds
        self.recipient_memory_seconds = recipient_memory_seconds
        self.state = CircuitState.CLOSED
        self.failures = 0  # consecutive service failures (suspect while > 0)
        self.blocked: ErrorClass | None = None
        self.trial = False  # closed after a probe: one call at a time until a message succeeds
        self._run_recipients: set[str] = set()  # distinct recipients of the current run of service failures
        self._failing: dict[str, float] = {}  # recipient -> last failure (insertion order = age)
        self._window: deque[tuple[float, str | None]] = deque()  # (time, failing recipient or None: success)
        self._window_failures: Counter[str] = Counter()
        self._opened_at = 0.0
        self._probe_out = False
        self._listener = on_change

    # --- admission --------------------------------------------------------------------------------

    def admit(self, now: float, in_flight: int) -> float:
        """0.0 if one message may start now, else the wait (inf: until a call in flight or the probe returns)."""
        if self.state is CircuitState.CLOSED:
            if self.trial:
                return 0.0 if in_flight == 0 else math.inf
            if self.failures == 0 or in_flight < max(1, self.threshold - self.failures):
                return 0.0
            return math.inf  # suspect: wait for the calls in flight to tell us more
        if self.state is CircuitState.OPEN:
            reopen = self._opened_at + (self.blocked_probe_seconds if self.blocked else self.reset_seconds)
            if now < reopen:
                return reopen - now
            self._set(CircuitState.HALF_OPEN, CircuitReason.RESET_ELAPSED)
        return math.inf  # HALF_OPEN: messages wait for the probe

    def take_probe(self, now: float) -> bool:
        """True once per half-open period: the caller must now run the health probe and report it."""
        if self.state is CircuitState.OPEN:
            self.admit(now, 0)
        if self.state is not CircuitState.HALF_OPEN or self._probe_out:
            return False
        self._probe_out = True
        return True

    # --- answers of messages ----------------------------------------------------------------------

    def record_success(self, now: float, recipient: str) -> None:
        self._failing.pop(recipient, None)
        if self.state is not CircuitState.CLOSED:
            return  # a call admitted before the breaker left CLOSED: only the probe decides now
        self.failures = 0
        self.trial = False
        self._run_recipients.clear()
        self._push(now, None)

    def record_failure(self, now: float, recipient: str, scope: Scope) -> None:
        """A transient failure (5xx, timeout, connection error, codes 1/2/131000/…) of a message."""
        if scope is Scope.RECIPIENT:
            known = recipient in self._failing
            self._remember_failing(now, recipient)
            if known or self.state is not CircuitState.CLOSED:
                return  # no new evidence: that recipient's own backoff deals with it
            self._push(now, recipient)
            self._check_ratio()
            return
        if self.state is not CircuitState.CLOSED:
            return
        if self.trial:
            self._open(now, CircuitReason.TRIAL_FAILED, {"probe": "first_message_after_health_check"})
            return
        self.failures += 1
        self._run_recipients.add(recipient)
        self._push(now, recipient)
        if self.failures >= self.threshold and len(self._run_recipients) >= min(self.threshold, 3):
            self._open(now, CircuitReason.SERVICE_FAILURES, {
                "consecutive_failures": self.failures, "distinct_recipients": len(self._run_recipients),
            })
        else:
            self._check_ratio()

    def block(self, now: float, error_class: ErrorClass) -> None:
        """An auth or policy error: stop the number until a probe succeeds."""
        if self.blocked is not None:
            return  # already blocked; a stale call's answer must not postpone the next probe
        self.blocked = error_class
        self._open(now, CircuitReason.BLOCKED, {"error_class": error_class.value})

    # --- the probe --------------------------------------------------------------------------------

    def probe_succeeded(self, now: float) -> None:
        """Meta answered the health call: close, on trial (one call at a time until a message succeeds)."""
        if not self._probe_out:
            return
        self._probe_out = False
        self.blocked = None
        self._window.clear()
        self._window_failures.clear()
        self._run_recipients.clear()
        self.failures = 0
        self.trial = True
        self._set(CircuitState.CLOSED, CircuitReason.PROBE_SUCCEEDED, {"probe": "health_check"})

    def probe_failed(self, now: float, error_class: ErrorClass, detail: str = "") -> None:
        """The health call failed: the number is still down (or still blocked, for auth/policy)."""
        if not self._probe_out:
            return
        if error_class in (ErrorClass.AUTH, ErrorClass.POLICY):
            self.blocked = error_class
        self._open(now, CircuitReason.PROBE_FAILED, {"probe": "health_check", "error_class": error_class.value,
                                                      "error": detail[:200]})

    def probe_abandoned(self) -> None:
        """The probe ended without a verdict (cancelled): allow another."""
        self._probe_out = False

    # --- internals --------------------------------------------------------------------------------

    def _remember_failing(self, now: float, recipient: str) -> None:
        failing = self._failing
        failing.pop(recipient, None)
        failing[recipient] = now
        horizon = now - self.recipient_memory_seconds
        while failing:
            oldest, at = next(iter(failing.items()))
            if at > horizon and len(failing) <= _FAILING_MEMORY:
                break
            del failing[oldest]

    def _push(self, now: float, failed: str | None) -> None:
        window = self._window
        window.append((now, failed))
        horizon = now - self.window_seconds
        while window and window[0][0] < horizon:
            _, old = window.popleft()
            if old is not None:
                left = self._window_failures[old] - 1
                if left:
                    self._window_failures[old] = left
                else:
                    del self._window_failures[old]
        if failed is not None:
            self._window_failures[failed] += 1

    def _check_ratio(self) -> None:
        calls = len(self._window)
        if calls < self.min_calls:
            return
        distinct = len(self._window_failures)
        if distinct < self.min_recipients:
            return
        failed = sum(self._window_failures.values())
        ratio = failed / calls
        if ratio < self.failure_ratio:
            return
        self._window.clear()
        self._window_failures.clear()
        self._probe_out = False
        self._set(CircuitState.HALF_OPEN, CircuitReason.FAILURE_RATIO, {
            "failure_ratio": round(ratio, 3), "window_calls": calls, "distinct_recipients": distinct,
        })

    def _open(self, now: float, reason: CircuitReason, evidence: dict[str, float | int | str]) -> None:
        self._opened_at = now
        self._probe_out = False
        self.trial = False
        self.failures = 0
        self._run_recipients.clear()
        self._set(CircuitState.OPEN, reason, evidence)

    def _set(self, state: CircuitState, reason: CircuitReason, evidence: dict[str, float | int | str] | None = None,
             ) -> None:
        self.state = state
        if state is CircuitState.CLOSED:
            self.blocked = None
        if self._listener is not None:
            self._listener(CircuitChange(state, reason, self.blocked, evidence or {}))
