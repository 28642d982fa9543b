"""Test helpers: a sliding-window checker and a fake clock."""

from __future__ import annotations

from collections import deque


class SlidingWindowCheck:
    """The most events seen in any window of `width` seconds, over all windows (not fixed buckets)."""

    def __init__(self, width: float = 1.0) -> None:
        self.width = width
        self.max_seen = 0
        self._times: deque[float] = deque()

    def add(self, t: float) -> None:
        times = self._times
        times.append(t)
        while t - times[0] >= self.width:
            times.popleft()
        self.max_seen = max(self.max_seen, len(times))


def max_in_window(times: list[float], width: float = 1.0) -> int:
    check = SlidingWindowCheck(width)
    for t in sorted(times):
        check.add(t)
    return check.max_seen
