"""Pure decisions of delivery, driven through time without Kafka or HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.contracts.vocabulary import CallbackAttemptResult as R
from pipeline.contracts.vocabulary import CircuitState
from pipeline.notify.policy import Backoff, Breaker, judge, parse_retry_after


@pytest.mark.parametrize(
    ("status", "result", "retry", "breaker_failure"),
    [
        (200, R.SUCCESS, False, False),
        (204, R.SUCCESS, False, False),
        (410, R.GONE, False, False),
        (429, R.THROTTLED, True, True),
        (408, R.THROTTLED, True, True),
        (500, R.SERVER_ERROR, True, True),
        (503, R.SERVER_ERROR, True, True),
        (301, R.REDIRECT, True, False),
        (400, R.CLIENT_ERROR, True, False),
        (401, R.CLIENT_ERROR, True, False),
        (None, R.CONNECT_ERROR, True, True),
    ],
)
def test_what_an_answer_means(status: int | None, result: R, retry: bool, breaker_failure: bool) -> None:
    verdict = judge(status)
    assert (verdict.result, verdict.retry, verdict.breaker_failure) == (result, retry, breaker_failure)


def test_a_timeout_is_its_own_result() -> None:
    assert judge(None, timed_out=True).result is R.TIMEOUT


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Thu, 03 Dec 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 03 Dec 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert judge(503, "7").after == 7.0
    assert (now + timedelta(seconds=1)) > now  # keeps the import honest


def test_backoff_doubles_with_jitter_within_half_and_whole_step_and_caps() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    assert [backoff.delay(n, rng=lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff.delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff.delay(30, rng=lambda: 1.0) == 60.0
    assert backoff.delay(10_000, rng=lambda: 1.0) == 60.0  # no overflow


def test_a_longer_retry_after_wins_and_is_capped() -> None:
    backoff = Backoff(base=1.0, cap=60.0, retry_after_cap=3600.0)
    assert backoff.delay(1, retry_after=30.0) == 30.0
    assert backoff.delay(8, retry_after=0.1, rng=lambda: 1.0) == 60.0  # a shorter one does not shorten backoff
    assert backoff.delay(1, retry_after=86_400.0) == 3600.0


def test_breaker_opens_after_consecutive_failures_probes_once_and_closes() -> None:
    breaker = Breaker(failures=3, reset_seconds=10.0)
    for t in (0.0, 1.0):
        breaker.record(True, t)
    breaker.record(False, 1.5)  # a success resets the count
    for t in (2.0, 3.0):
        breaker.record(True, t)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow(3.0)
    breaker.record(True, 4.0)
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow(13.9)
    assert breaker.allow(14.0)  # the probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow(14.0)  # only one probe at a time
    breaker.record(True, 15.0)  # the probe failed: open again
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow(24.0)
    assert breaker.allow(25.0)
    breaker.record(False, 25.5)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow(25.5)
    assert breaker.allow(25.5)


def test_breaker_stays_open_as_long_as_retry_after_asks() -> None:
    breaker = Breaker(failures=1, reset_seconds=5.0)
    breaker.record(True, 0.0, retry_after=60.0)
    assert not breaker.allow(59.0)
    assert breaker.allow(60.0)
