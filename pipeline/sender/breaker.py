"""A circuit breaker per business number: stop calling Meta while it is down, probe, resume.

    breaker = CircuitBreaker(threshold=5, reset_seconds=60.0)
    wait = breaker.admit(now, in_flight=lane_in_flight)  # 0.0 go · >0 seconds · inf: until a call returns
    probe = breaker.probing                              # the call just admitted is the half-open probe
    breaker.record_success(probe) / breaker.record_failure(now, probe) / breaker.block(now, cls, probe)

States (CircuitState): CLOSED sends freely; after `threshold` consecutive transient failures it
is OPEN and admits nothing for `reset_seconds`; then HALF_OPEN admits exactly one probe, whose
success closes it and whose failure re-opens it for another `reset_seconds`. While OPEN the
sender's work for the number waits in memory: nothing is failed because Meta was down.

Two additions to the textbook breaker:

* **Suspect closed state.** After k consecutive failures only `threshold - k` calls may be in
  flight, so that however many calls were queued, at most `threshold` new failures can reach Meta
  before the breaker opens. A single success resets k, so one stray 500 costs nothing measurable.
* **Blocked.** Auth (0, 190) and policy (368, 131031) errors stop the number like an open breaker
  whose probe interval is `blocked_probe_seconds`: retrying burns nothing but time, an operator
  must act, and the probe notices when they have.

Results of calls admitted *before* the breaker opened say nothing about now: while OPEN or
HALF_OPEN only the probe's result counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pipeline.contracts import CircuitState, ErrorClass

StateListener = Callable[[CircuitState, ErrorClass | None], None]


class CircuitBreaker:
    __slots__ = (
        "_listener", "_opened_at", "_probe_out", "blocked", "blocked_probe_seconds", "failures",
        "probing", "reset_seconds", "state", "threshold",
    )

    def __init__(
        self,
        threshold: int = 5,
        reset_seconds: float = 60.0,
        *,
        blocked_probe_seconds: float = 300.0,
        on_change: StateListener | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold: must be >= 1 consecutive failures; got {threshold}")
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.blocked_probe_seconds = blocked_probe_seconds
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.blocked: ErrorClass | None = None
        self.probing = False
        self._opened_at = 0.0
        self._probe_out = False
        self._listener = on_change

    def admit(self, now: float, in_flight: int) -> float:
        """0.0 if one call may start now (then `probing` says whether it is the probe), else the wait."""
        self.probing = False
        if self.state is CircuitState.CLOSED:
            if self.failures == 0 or in_flight < self.threshold - self.failures:
                return 0.0
            return math.inf  # suspect: wait for the calls in flight to tell us more
        if self.state is CircuitState.OPEN:
            reopen = self._opened_at + (self.blocked_probe_seconds if self.blocked else self.reset_seconds)
            if now < reopen:
                return reopen - now
            self._set(CircuitState.HALF_OPEN)
        if self._probe_out:
            return math.inf
        self._probe_out = True
        self.probing = True
        return 0.0

    def record_success(self, probe: bool) -> None:
        if self.state is CircuitState.CLOSED:
            self.failures = 0
        elif probe:
            self._close()

    def record_failure(self, now: float, probe: bool) -> None:
        """A transient failure (5xx, timeout, connection error, codes 1/2/131000/…)."""
        if self.state is CircuitState.CLOSED:
            self.failures += 1
            if self.failures >= self.threshold:
                self._open(now)
        elif probe:
            self._open(now)

    def block(self, now: float, error_class: ErrorClass, probe: bool) -> None:
        """An auth or policy error: stop the number until a probe succeeds."""
        if self.blocked is not None and not probe:
            return  # already blocked; a stale call's answer must not postpone the next probe
        self.blocked = error_class
        self._open(now)

    def release_probe(self) -> None:
        """The probe's call ended without a verdict on Meta (e.g. the request expired): allow another."""
        self._probe_out = False

    @property
    def waits_for_reset(self) -> bool:
        return self.state is not CircuitState.CLOSED

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probe_out = False
        self._set(CircuitState.OPEN)

    def _close(self) -> None:
        self.failures = 0
        self.blocked = None
        self._probe_out = False
        self._set(CircuitState.CLOSED)

    def _set(self, state: CircuitState) -> None:
        self.state = state
        if self._listener is not None:
            self._listener(state, self.blocked)
