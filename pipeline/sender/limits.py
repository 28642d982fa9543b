"""How fast one business number may send: never above its rate in any one-second window.

    limiter = RateLimiter(rate=80.0, on_decrease=lambda rate: ...)   # told each cut, like the breaker's listener
    wait = limiter.acquire(now)     # scheduling: 0.0 = one send may be dispatched (a slot is reserved)
    wait = limiter.send(now)        # right before the request is written: 0.0 = go (and it is counted)
    limiter.release()               # a reserved slot that will not be used after all
    limiter.throttled(now)          # Meta answered 130429: 2 % slower, then creep back up
    limiter.pause(now, 60.0)        # 4 / 80007 / 131048: nothing for a while

Two rules:

* a **sliding window** of the actual sends: at most `floor(rate)` in any window of `1 s + guard`.
  This is the hard guarantee, checked by `send` at the moment the request is written (a busy event
  loop can run a dispatched call tens of milliseconds after the scheduler chose it; counting the
  decision instead would let those late calls bunch up). A plain token bucket with burst = rate
  does *not* give this guarantee: it can spend a full bucket at the end of one second and a
  refilled one at the start of the next, twice the rate in the window that straddles them. The
  `guard` widens the window by the jitter between our clock and Meta's (network, the far side's
  own scheduling): sends we keep within `floor(rate)` per `1 s + guard` stay within the rate in
  every one-second window at the far end, as long as the jitter stays under `guard`.
* a **GCRA** pacer (a leaky bucket in one timestamp) at `rate / (1 s + guard)` with a burst of
  `burst_seconds`, used by `acquire`, so that traffic is even rather than a full window at once
  followed by silence. `acquire` also counts reserved slots against the window, so the scheduler
  does not dispatch calls that `send` would only make wait.

AIMD on 130429: every 130429 takes `decrease` (2 %) off the rate (at least one send per second),
and the rate climbs back by `recover` x the configured rate per second (5 %). Each 130429 is one
request too many in some window, so the cut grows with the evidence: a 2x overload answers half
the requests with 130429 and halves the rate within a round trip, while the few 130429s that
network jitter can cause cost a few percent for a fraction of a second instead of halving the
throughput for ten (halving once per window was measured to cost ~10 % of the sender's
throughput on this machine). Against a cap below the configured rate it settles where ~5 % of the
calls see 130429 (recovery / decrease at the cap), and the effective-rate gauge shows the real cap.

Written by hand: the rate-limit libraries (aiolimiter, limits) neither adapt nor say "wait how
long", which the scheduler needs to set one timer instead of a sleeping task per message.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

# A wait is never reported as 0.0 (which means "acquired"), however the float arithmetic rounds.
_MIN_WAIT = 1e-6


class RateLimiter:
    __slots__ = (
        "_burst_seconds", "_listener", "_recover", "_sends", "_tat", "_updated", "configured",
        "decrease", "floor", "paused_until", "rate", "reserved", "window",
    )

    def __init__(
        self,
        rate: float,
        *,
        guard: float = 0.0,
        burst_seconds: float = 0.02,
        decrease: float = 0.02,
        recover: float = 0.05,
        floor_fraction: float = 0.05,
        on_decrease: Callable[[float], None] | None = None,
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
        self.reserved = 0  # slots given out by `acquire`, not yet used by `send`
        self._tat = 0.0  # GCRA theoretical arrival time of the next send
        self._updated: float | None = None
        self._listener = on_decrease  # told the new rate after each 130429 (the climb back is gradual)

    @property
    def window_cap(self) -> int:
        """Sends allowed in any window of `self.window` seconds at the current rate."""
        return max(1, math.floor(self.rate + 1e-9))

    def acquire(self, now: float) -> float:
        """Reserve one send at `now` (returns 0.0), or say how long until one may be free."""
        self._recover_rate(now)
        if now < self.paused_until:
            return max(_MIN_WAIT, self.paused_until - now)
        wait = self._window_wait(now, self.reserved)
        if wait > 0.0:
            return wait
        interval = self.window / self.rate
        tolerance = max(0.0, self._burst_seconds - interval)
        if now < self._tat - tolerance:
            return max(_MIN_WAIT, self._tat - tolerance - now)
        self._tat = max(self._tat, now) + interval
        self.reserved += 1
        return 0.0

    def send(self, now: float) -> float:
        """The reserved send is about to be written: 0.0 = go (counted now), else wait and ask again."""
        wait = self._window_wait(now, 0)
        if wait > 0.0:
            return wait
        self._sends.append(now)
        self.reserved = max(0, self.reserved - 1)
        return 0.0

    def release(self) -> None:
        """Give back a slot from `acquire` that `send` will not use."""
        self.reserved = max(0, self.reserved - 1)

    def _window_wait(self, now: float, extra: int) -> float:
        sends = self._sends
        horizon = now - self.window - _MIN_WAIT  # strictly out of the window, whatever the rounding
        while sends and sends[0] <= horizon:
            sends.popleft()
        cap = self.window_cap - extra
        if len(sends) < cap:
            return 0.0
        if cap <= 0:
            return self.window / self.rate  # every slot is reserved: ask again after one interval
        # The send that must leave the window first leaves it at sends[-cap] + window (the deque may
        # hold more than the cap right after a decrease).
        return max(_MIN_WAIT, sends[-cap] + self.window + 2 * _MIN_WAIT - now)

    def throttled(self, now: float) -> None:
        """Meta said 130429: one send too many somewhere; take `decrease` of the rate off."""
        self._recover_rate(now)
        self.rate = max(self.floor, self.rate - max(1.0, self.rate * self.decrease))
        if self._listener is not None:
            self._listener(self.rate)

    def pause(self, now: float, seconds: float) -> None:
        """Send nothing for `seconds` (an app or account limit: Meta asks for minutes)."""
        self.paused_until = max(self.paused_until, now + seconds)

    def _recover_rate(self, now: float) -> None:
        updated = self._updated
        self._updated = now
        if updated is not None and self.rate < self.configured and now > updated:
            self.rate = min(self.configured, self.rate + (now - updated) * self._recover)

