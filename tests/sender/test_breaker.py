"""The circuit breaker: opens on consecutive transient failures, probes once, blocks on auth/policy."""

from __future__ import annotations

import math

from pipeline.contracts import CircuitState, ErrorClass
from pipeline.sender.breaker import CircuitBreaker


def test_opens_after_threshold_consecutive_failures_and_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(threshold=3, reset_seconds=10)
    breaker.record_failure(0.0, probe=False)
    breaker.record_failure(0.0, probe=False)
    breaker.record_success(probe=False)
    breaker.record_failure(0.0, probe=False)
    breaker.record_failure(0.0, probe=False)
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure(1.0, probe=False)
    assert breaker.state is CircuitState.OPEN
    assert breaker.admit(2.0, in_flight=0) == 9.0


def test_suspect_state_caps_in_flight_so_at_most_threshold_failures_reach_meta() -> None:
    breaker = CircuitBreaker(threshold=5, reset_seconds=10)
    assert breaker.admit(0.0, in_flight=300) == 0.0  # healthy: no cap
    breaker.record_failure(0.0, probe=False)
    # 4 more failures open it: no more than 4 calls may be out
    assert breaker.admit(0.0, in_flight=3) == 0.0
    assert breaker.admit(0.0, in_flight=4) == math.inf
    breaker.record_failure(0.0, probe=False)
    breaker.record_failure(0.0, probe=False)
    assert breaker.admit(0.0, in_flight=2) == math.inf
    assert breaker.admit(0.0, in_flight=1) == 0.0


def test_half_open_admits_exactly_one_probe_per_reset_interval() -> None:
    breaker = CircuitBreaker(threshold=1, reset_seconds=10)
    breaker.record_failure(0.0, probe=False)
    assert breaker.admit(9.9, 0) > 0
    assert breaker.admit(10.0, 0) == 0.0
    assert breaker.probing
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.admit(10.1, 0) == math.inf  # the probe is out
    breaker.record_failure(11.0, probe=True)
    assert breaker.state is CircuitState.OPEN
    assert breaker.admit(20.9, 0) > 0  # reset interval counted from the failed probe
    assert breaker.admit(21.0, 0) == 0.0
    breaker.record_success(probe=True)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.admit(21.0, 100) == 0.0


def test_answers_of_calls_sent_before_opening_do_not_decide() -> None:
    breaker = CircuitBreaker(threshold=1, reset_seconds=10)
    breaker.record_failure(0.0, probe=False)
    breaker.record_success(probe=False)  # a stale call returning late
    assert breaker.state is CircuitState.OPEN
    breaker.admit(10.0, 0)
    breaker.record_failure(10.5, probe=False)  # stale too
    assert breaker.state is CircuitState.HALF_OPEN


def test_a_probe_that_was_not_sent_can_be_released() -> None:
    breaker = CircuitBreaker(threshold=1, reset_seconds=1)
    breaker.record_failure(0.0, probe=False)
    assert breaker.admit(1.0, 0) == 0.0
    breaker.release_probe()
    assert breaker.admit(1.0, 0) == 0.0
    assert breaker.probing


def test_auth_blocks_the_number_until_a_probe_succeeds_and_reports_transitions() -> None:
    seen: list[tuple[CircuitState, ErrorClass | None]] = []
    breaker = CircuitBreaker(5, 1.0, blocked_probe_seconds=30.0, on_change=lambda s, b: seen.append((s, b)))
    breaker.block(0.0, ErrorClass.AUTH, probe=False)
    assert breaker.state is CircuitState.OPEN
    assert breaker.admit(5.0, 0) == 25.0  # the blocked interval, not the reset interval
    breaker.block(6.0, ErrorClass.AUTH, probe=False)  # a stale call must not postpone the probe
    assert breaker.admit(30.0, 0) == 0.0
    breaker.block(30.5, ErrorClass.AUTH, probe=True)  # still broken
    assert breaker.admit(59.0, 0) > 0
    assert breaker.admit(60.5, 0) == 0.0
    breaker.record_success(probe=True)
    assert breaker.blocked is None
    assert seen[0] == (CircuitState.OPEN, ErrorClass.AUTH)
    assert seen[-1] == (CircuitState.CLOSED, None)
