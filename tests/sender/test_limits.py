"""The rate limiter: never above the rate in any window, even, adaptive on 130429."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sender.limits import RateLimiter
from tests.sender.checks import max_in_window


def drive(limiter: RateLimiter, until: float, step: float = 0.0005, start: float = 0.0) -> list[float]:
    """Ask for a slot as often as `step` allows (a hungry sender); return the send times."""
    sent, now = [], start
    while now < until:
        if limiter.acquire(now) == 0.0:
            assert limiter.send(now) == 0.0
            sent.append(now)
            continue  # try again at once: burst as much as allowed
        now += step
    return sent


def test_a_plain_token_bucket_would_double_the_rate_across_a_window_edge() -> None:
    # The trap the limiter avoids: capacity = rate, full at t=0.99, refilled by t=1.98.
    sends = [0.99] * 80 + [0.99 + i / 80 for i in range(1, 81)]
    assert max_in_window(sends) > 80


@pytest.mark.parametrize("rate", [1.0, 20.0, 80.0, 1000.0])
def test_never_more_than_the_rate_in_any_one_second_window(rate: float) -> None:
    limiter = RateLimiter(rate)
    sent = drive(limiter, until=5.0)
    assert max_in_window(sent) <= int(rate)
    # and as fast as allowed: within a few percent of the rate
    assert len(sent) >= rate * 5 * 0.95 - 2


def test_the_guard_keeps_windows_of_1s_plus_guard_under_the_rate() -> None:
    limiter = RateLimiter(1000.0, guard=0.03)
    sent = drive(limiter, until=4.0)
    assert max_in_window(sent, width=1.03) <= 1000
    assert len(sent) / 4.0 >= 1000 / 1.03 * 0.98  # costs only the guard's share of throughput


def test_sends_are_even_not_one_burst_per_window() -> None:
    limiter = RateLimiter(100.0)
    sent = drive(limiter, until=3.0)
    assert max_in_window(sent, width=0.1) <= 16  # ~10 per 100 ms plus a 50 ms burst, not 100 at once


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([3.0, 80.0, 250.0]),
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=50, max_size=400),
    throttles=st.sets(st.integers(min_value=0, max_value=399), max_size=5),
)
def test_no_window_exceeds_the_rate_whatever_the_arrival_pattern(
    rate: float, gaps: list[float], throttles: set[int]
) -> None:
    limiter = RateLimiter(rate, guard=0.02)
    now, sent = 0.0, []
    for index, gap in enumerate(gaps):
        now += gap
        if index in throttles:
            limiter.throttled(now)
        while (wait := limiter.acquire(now)) > 0:
            now += wait  # the scheduler comes back exactly when told
        while (wait := limiter.send(now)) > 0:
            now += wait
        sent.append(now)
    assert max_in_window(sent, width=1.02) <= int(rate)


def test_each_130429_takes_a_little_off_and_the_rate_recovers() -> None:
    limiter = RateLimiter(1000.0)
    for _ in range(5):  # what jitter can cause: a handful
        limiter.throttled(10.0)
    assert limiter.rate == pytest.approx(1000 * 0.98**5)
    limiter.acquire(12.0)  # +5 % of the configured rate per second
    assert limiter.rate == 1000.0
    slow = RateLimiter(10.0)
    slow.throttled(0.0)
    assert slow.rate == 9.0  # at least one send per second less


def test_a_2x_overload_converges_under_metas_cap_within_seconds() -> None:
    limiter = RateLimiter(200.0)
    meta: list[float] = []
    answers: list[float] = []  # when 130429s reach the sender: a 200 ms round trip later
    rejected: list[float] = []
    now = 0.0
    while now < 6.0:
        while answers and answers[0] <= now:
            limiter.throttled(answers.pop(0))
        if limiter.acquire(now) == 0.0 and limiter.send(now) == 0.0:
            meta = [t for t in meta if now - t < 1.0]
            if len(meta) >= 100:  # Meta's cap: 100 in any second
                answers.append(now + 0.2)
                rejected.append(now)
            else:
                meta.append(now)
            continue
        now += 0.001
    assert 80 <= limiter.rate <= 130
    assert len([t for t in rejected if t >= 3.0]) < 0.1 * 300  # under 10 % rejected once settled


def test_after_a_decrease_the_window_holds_the_new_rate() -> None:
    limiter = RateLimiter(100.0, decrease=0.5, recover=0.0)
    before = drive(limiter, until=2.0)
    limiter.throttled(2.0)  # a limiter configured to halve
    after = drive(limiter, until=6.0, start=2.0)
    assert max_in_window([t for t in after if t >= 3.0]) <= 50
    assert max_in_window(before + after) <= 100


def test_the_window_is_enforced_when_requests_are_written_not_when_they_were_chosen() -> None:
    # A busy event loop runs dispatched calls late: 100 chosen over 1 s, all written at t = 1.0.
    limiter = RateLimiter(50.0, burst_seconds=1.0)
    chosen = [t / 100 for t in range(100) if limiter.acquire(t / 100) == 0.0]
    assert len(chosen) == 50  # reservations count against the window too
    written, now = [], 1.0
    for _ in chosen:
        while (wait := limiter.send(now)) > 0:
            now += wait
        written.append(now)
    more = [t for t in (1.0, 1.5, 1.9) if limiter.acquire(t) == 0.0 and limiter.send(t) == 0.0]
    assert max_in_window(written + more) <= 50


def test_a_released_reservation_frees_its_slot() -> None:
    limiter = RateLimiter(1.0)
    assert limiter.acquire(0.0) == 0.0
    assert limiter.acquire(0.0) > 0
    limiter.release()
    assert limiter.acquire(5.0) == 0.0


def test_pause_stops_everything_until_it_ends() -> None:
    limiter = RateLimiter(80.0)
    limiter.pause(1.0, 60.0)
    assert limiter.acquire(1.0) == pytest.approx(60.0)
    assert limiter.acquire(61.0) == 0.0


def test_bad_arguments_name_the_rule() -> None:
    with pytest.raises(ValueError, match="rate: must be > 0"):
        RateLimiter(0)
    with pytest.raises(ValueError, match="guard"):
        RateLimiter(10, guard=-1)


def test_a_130429_tells_the_listener_the_new_rate() -> None:
    seen: list[float] = []
    limiter = RateLimiter(100.0, on_decrease=seen.append)
    limiter.throttled(0.0)
    limiter.throttled(0.0)
    assert seen == [98.0, 96.04]
