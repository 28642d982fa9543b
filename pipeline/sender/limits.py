"""How fast one business number may send: never above its rate in any one-second window.

    limiter = RateLimiter(rate=80.0)
    wait = limiter.acquire(now)     # 0.0: one send may go now (and is counted); else seconds to wait
    limiter.throttled(now)          # Meta answered 130429: halve the rate, then creep back up
    limiter.pause(now, 60.0)        # 4 / 80007 / 131048: nothing for a while

Two rules must both allow a send:

* a **sliding window** of the last sends: at most `floor(rate)` in any window of `1 s + guard`.
  This is the hard guarantee. A plain token bucket with burst = rate does *not* give it: it can
  spend a full bucket at the end of one second and a refilled one at the start of the next, twice
  the rate in the window that straddles them. The `guard` widens the window by the jitter between
  our clock and Meta's (event-loop delay, network): sends we space by `1 s + guard` still fall
  into different one-second windows at the far end.
* a **GCRA** pacer (a leaky bucket in one timestamp) at `rate / (1 s + guard)` with a small burst,
  so that traffic is even instead of a full window at once followed by silence.

AIMD on 130429: multiply the rate by `decrease` (at most once per window, since one overshoot
comes back as many 130429s from the calls already in flight), then add `recover` x the configured
rate per second until it is back. Written by hand: the rate-limit libraries (aiolimiter, limits)
neither adapt nor expose "wait how long", which the scheduler needs to set one timer, not sleep.
"""

from __future__ import annotations

import math
from collections import deque

# A wait is never reported as 0.0 (which means "acquired"), however the float arithmetic rounds.
_MIN_WAIT = 1e-6


class RateLimiter:
    __slots__ = (
        "_burst_seconds", "_last_decrease", "_recover", "_sends", "_tat", "_updated", "configured",
        "decrease", "floor", "paused_until", "rate", "window",
    )

    def __init__(
        self,
        rate: float,
        *,
        guard: float = 0.0,
        burst_seconds: float = 0.02,
        decrease: float = 0.5,
        recover: float = 0.05,
        floor_fraction: float = 0.05,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate: must be > 0 sends per second; got {rate}")
        if guard < 0:
            raise ValueError(f"guard: must be >= 0 seconds; got {guard}")
        self.configured = float(rate)
        self.rate = float(rate)
        self.window = 1.0 + guard
        self.decrease = decrease
        self.floor = max(rate * floor_fraction, min(rate, 1.0))
        self.paused_until = 0.0
        self._recover = recover * rate  # sends/s regained per second
        self._burst_seconds = burst_seconds
        self._sends: deque[float] = deque()
        self._tat = 0.0  # GCRA theoretical arrival time of the next send
        self._updated: float | None = None
        self._last_decrease = -math.inf

    @property
    def window_cap(self) -> int:
        """Sends allowed in any window of `self.window` seconds at the current rate."""
        return max(1, math.floor(self.rate + 1e-9))

    def acquire(self, now: float) -> float:
        """Take one send slot at `now` (returns 0.0), or say how long until one may be free."""
        self._recover_rate(now)
        if now < self.paused_until:
            return max(_MIN_WAIT, self.paused_until - now)
        sends = self._sends
        horizon = now - self.window - _MIN_WAIT  # strictly out of the window, whatever the rounding
        while sends and sends[0] <= horizon:
            sends.popleft()
        if len(sends) >= self.window_cap:
            # The oldest send in the window leaves it at sends[-cap] + window (the deque may hold
            # more than cap entries right after a decrease).
            return max(_MIN_WAIT, sends[-self.window_cap] + self.window + 2 * _MIN_WAIT - now)
        interval = self.window / self.rate
        tolerance = max(0.0, self._burst_seconds - interval)
        if now < self._tat - tolerance:
            return max(_MIN_WAIT, self._tat - tolerance - now)
        self._tat = max(self._tat, now) + interval
        sends.append(now)
        return 0.0

    def throttled(self, now: float) -> None:
        """Meta said 130429: slow down (once per window, however many calls report it)."""
        self._recover_rate(now)
        if now - self._last_decrease < self.window:
            return
        self._last_decrease = now
        self.rate = max(self.floor, self.rate * self.decrease)

    def pause(self, now: float, seconds: float) -> None:
        """Send nothing for `seconds` (an app or account limit: Meta asks for minutes)."""
        self.paused_until = max(self.paused_until, now + seconds)

    def _recover_rate(self, now: float) -> None:
        updated = self._updated
        self._updated = now
        if updated is not None and self.rate < self.configured and now > updated:
            self.rate = min(self.configured, self.rate + (now - updated) * self._recover)

