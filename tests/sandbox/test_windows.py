"""The limit arithmetic on its own: the sliding window's maximum and the pair bucket's bound."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.sandbox.limits import PairLimiter, SlidingWindow

gaps = st.lists(st.floats(min_value=0.0, max_value=0.7, allow_nan=False), min_size=1, max_size=200)


def _times(steps: list[float]) -> list[float]:
    times, now = [], 100.0
    for step in steps:
        now += step
        times.append(now)
    return times


@given(gaps)
def test_max_seen_is_the_most_events_in_any_one_second(steps: list[float]) -> None:
    times = _times(steps)
    window = SlidingWindow()
    for t in times:
        window.add(t)
    # Brute force: every window (t - 1 s, t] ending at an event.
    expected = max(sum(1 for u in times if t - 1.0 < u <= t) for t in times)
    assert window.max_seen == expected
    assert window.total == len(times)
    assert window.count(times[-1]) == sum(1 for u in times if times[-1] - 1.0 < u <= times[-1])


@given(gaps, st.integers(min_value=1, max_value=5), st.floats(min_value=0.1, max_value=3.0))
def test_pair_bucket_never_admits_more_than_burst_plus_refill(steps: list[float], burst: int, interval: float) -> None:
    times = _times(steps)
    limiter = PairLimiter()
    admitted = [t for t in times if limiter.take(("n", "r"), t, burst, interval)]
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            # Within any span, at most `burst` plus what refilled during it.
            assert j - i + 1 <= burst + (admitted[j] - start) / interval + 1e-9
    other = PairLimiter()
    assert other.take(("n", "r"), times[0], burst, interval)  # a fresh pair starts with a full bucket
