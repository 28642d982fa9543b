"""Meta's two send limits, measured so that tests can assert on them.

    window = SlidingWindow()
    window.count(now)          # events in (now - 1 s, now]
    window.add(now)            # and window.max_seen: the most ever seen in any one second

    pairs = PairLimiter()
    pairs.take(("106540352242922", "16505551234"), now, burst=3, interval=6.0)   # False: 131056

A sliding window (not fixed one-second buckets) because a sender that is correct on average can still
burst 2x across a bucket edge; that is exactly what the throughput cap must catch.
"""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """Timestamps of the last second's events; `max_seen` is the largest count any one-second window held."""

    __slots__ = ("_times", "max_seen", "total")

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self.max_seen = 0
        self.total = 0

    def count(self, now: float) -> int:
        times = self._times
        while times and now - times[0] >= 1.0:
            times.popleft()
        return len(times)

    def add(self, now: float) -> None:
        # The maximum over all windows is reached by some window ending at an event, so checking
        # after each event finds it exactly.
        self.count(now)
        self._times.append(now)
        self.total += 1
        self.max_seen = max(self.max_seen, len(self._times))


class PairLimiter:
    """A token bucket per (business number, recipient): `burst` messages at once, then one per `interval`."""

    _PRUNE_AT = 100_000

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, updated at)

    def take(self, key: tuple[str, str], now: float, burst: int, interval: float) -> bool:
        tokens, updated = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - updated) / interval)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._PRUNE_AT:
            self._prune(now, burst, interval)
        return True

    def _prune(self, now: float, burst: int, interval: float) -> None:
        # A bucket that has refilled is the same as no bucket: forget it to bound memory.
        full_after = burst * interval
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}

    def clear(self) -> None:
        self._buckets.clear()
