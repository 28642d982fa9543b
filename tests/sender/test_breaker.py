"""The circuit breaker: opens on Meta's failures, not on a few failing recipients; probes with a health call.

Replaced from the consecutive-failures breaker (issue 19): the test that five consecutive failures of
*any* kind open the circuit pinned the naive behaviour and now asserts it for service failures only,
across distinct recipients (`test_service_failures_across_recipients_open_after_threshold...`); the
half-open tests now expect a health probe instead of a message probe.
"""

from __future__ import annotations

import math
import random

from pipeline.contracts import CircuitReason, CircuitState, ErrorClass
from pipeline.sender.breaker import CircuitBreaker, CircuitChange, Scope, scope_of
from pipeline.whatsapp import GraphApiError

SERVICE, RECIPIENT = Scope.SERVICE, Scope.RECIPIENT


def test_service_failures_across_recipients_open_after_threshold_and_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(threshold=3, reset_seconds=10)
    breaker.record_failure(0.0, "a", SERVICE)
    breaker.record_failure(0.0, "b", SERVICE)
    breaker.record_success(0.0, "c")
    breaker.record_failure(0.0, "d", SERVICE)
    breaker.record_failure(0.0, "e", SERVICE)
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure(1.0, "f", SERVICE)
    assert breaker.state is CircuitState.OPEN
    assert breaker.admit(2.0, in_flight=0) == 9.0


def test_one_recipient_failing_again_and_again_never_opens_it() -> None:
    breaker = CircuitBreaker(threshold=5, reset_seconds=10)
    for n in range(50):
        breaker.record_failure(float(n), "+16505559000", SERVICE)  # the same recipient, 50 times
        breaker.record_failure(float(n), "+16505559001", RECIPIENT)
    assert breaker.state is CircuitState.CLOSED


def test_suspect_state_caps_in_flight_so_at_most_threshold_failures_reach_meta() -> None:
    breaker = CircuitBreaker(threshold=5, reset_seconds=10)
    assert breaker.admit(0.0, in_flight=300) == 0.0  # healthy: no cap
    breaker.record_failure(0.0, "a", SERVICE)
    # 4 more failures open it: no more than 4 calls may be out
    assert breaker.admit(0.0, in_flight=3) == 0.0
    assert breaker.admit(0.0, in_flight=4) == math.inf
    breaker.record_failure(0.0, "b", SERVICE)
    breaker.record_failure(0.0, "c", SERVICE)
    assert breaker.admit(0.0, in_flight=2) == math.inf
    assert breaker.admit(0.0, in_flight=1) == 0.0


def test_recipient_failures_neither_count_towards_nor_reset_the_service_run() -> None:
    breaker = CircuitBreaker(threshold=3, reset_seconds=10)
    breaker.record_failure(0.0, "a", SERVICE)
    breaker.record_failure(0.0, "b", SERVICE)
    breaker.record_failure(0.0, "x", RECIPIENT)
    assert breaker.failures == 2
    breaker.record_failure(0.0, "c", SERVICE)
    assert breaker.state is CircuitState.OPEN


def test_30_percent_of_recipients_failing_keeps_it_closed() -> None:
    rng = random.Random(7)
    breaker = CircuitBreaker(threshold=5, reset_seconds=10)
    recipients = [f"r{i}" for i in range(200)]
    failing = set(rng.sample(recipients, 60))
    now = 0.0
    for _ in range(20_000):
        now += 0.002
        to = rng.choice(recipients)
        if to in failing:
            breaker.record_failure(now, to, RECIPIENT)
        else:
            breaker.record_success(now, to)
        assert breaker.state is CircuitState.CLOSED


def test_many_distinct_recipients_failing_make_it_probe_at_once() -> None:
    changes: list[CircuitChange] = []
    breaker = CircuitBreaker(threshold=5, reset_seconds=60, min_calls=20, min_recipients=5,
                             on_change=changes.append)
    for n in range(19):
        breaker.record_failure(n * 0.01, f"r{n}", RECIPIENT)
    assert breaker.state is CircuitState.CLOSED  # under the minimum volume
    breaker.record_failure(0.2, "r19", RECIPIENT)
    assert breaker.state is CircuitState.HALF_OPEN
    assert changes[-1].reason is CircuitReason.FAILURE_RATIO
    assert changes[-1].evidence["distinct_recipients"] == 20
    assert breaker.admit(0.2, 0) == math.inf  # messages wait for the probe...
    assert breaker.take_probe(0.2)  # ...which is due now, not after the reset interval
    assert not breaker.take_probe(0.2)  # exactly one
    breaker.probe_succeeded(0.3)  # Meta answers: those recipients fail, not the number
    assert breaker.state is CircuitState.CLOSED
    # Their further failures are no new evidence.
    for n in range(20):
        breaker.record_failure(1.0 + n * 0.01, f"r{n}", RECIPIENT)
    assert breaker.state is CircuitState.CLOSED


def test_a_failed_probe_reopens_and_the_next_probe_waits_a_reset_interval() -> None:
    changes: list[CircuitChange] = []
    breaker = CircuitBreaker(threshold=1, reset_seconds=10, on_change=changes.append)
    breaker.record_failure(0.0, "a", SERVICE)
    assert changes[-1].reason is CircuitReason.SERVICE_FAILURES
    assert not breaker.take_probe(9.9)
    assert breaker.admit(9.9, 0) > 0
    assert breaker.take_probe(10.0)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.admit(10.1, 0) == math.inf  # the probe is out
    assert not breaker.take_probe(10.1)
    breaker.probe_failed(11.0, ErrorClass.TRANSIENT, "HTTP 503")
    assert breaker.state is CircuitState.OPEN
    assert changes[-1].reason is CircuitReason.PROBE_FAILED
    assert not breaker.take_probe(20.9)  # reset interval counted from the failed probe
    assert breaker.take_probe(21.0)
    breaker.probe_succeeded(21.2)
    assert breaker.state is CircuitState.CLOSED


def test_after_a_good_probe_one_call_at_a_time_until_a_message_succeeds() -> None:
    changes: list[CircuitChange] = []
    breaker = CircuitBreaker(threshold=5, reset_seconds=10, on_change=changes.append)
    for r in "abcde":
        breaker.record_failure(0.0, r, SERVICE)
    assert breaker.take_probe(10.0)
    breaker.probe_succeeded(10.1)
    assert breaker.admit(10.1, 0) == 0.0
    assert breaker.admit(10.1, 1) == math.inf  # on trial
    breaker.record_failure(10.3, "f", SERVICE)  # the GET answered, messages still fail
    assert breaker.state is CircuitState.OPEN
    assert changes[-1].reason is CircuitReason.TRIAL_FAILED
    assert breaker.take_probe(20.3)
    breaker.probe_succeeded(20.4)
    breaker.record_failure(20.5, "g", RECIPIENT)  # a failing recipient says nothing about the number
    assert breaker.admit(20.5, 1) == math.inf
    breaker.record_success(20.6, "h")
    assert breaker.admit(20.6, 100) == 0.0  # trial over


def test_answers_of_calls_sent_before_opening_do_not_decide() -> None:
    breaker = CircuitBreaker(threshold=1, reset_seconds=10)
    breaker.record_failure(0.0, "a", SERVICE)
    breaker.record_success(0.0, "b")  # a stale call returning late
    assert breaker.state is CircuitState.OPEN
    breaker.take_probe(10.0)
    breaker.record_failure(10.5, "c", SERVICE)  # stale too
    breaker.record_success(10.5, "d")
    assert breaker.state is CircuitState.HALF_OPEN


def test_an_abandoned_probe_can_be_taken_again() -> None:
    breaker = CircuitBreaker(threshold=1, reset_seconds=1)
    breaker.record_failure(0.0, "a", SERVICE)
    assert breaker.take_probe(1.0)
    breaker.probe_abandoned()
    assert breaker.take_probe(1.0)


def test_auth_blocks_the_number_until_a_probe_succeeds_and_reports_transitions() -> None:
    seen: list[tuple[CircuitState, ErrorClass | None]] = []
    breaker = CircuitBreaker(5, 1.0, blocked_probe_seconds=30.0,
                             on_change=lambda c: seen.append((c.state, c.blocked)))
    breaker.block(0.0, ErrorClass.AUTH)
    assert breaker.state is CircuitState.OPEN
    assert breaker.admit(5.0, 0) == 25.0  # the blocked interval, not the reset interval
    breaker.block(6.0, ErrorClass.AUTH)  # a stale call must not postpone the probe
    assert breaker.take_probe(30.0)
    breaker.probe_failed(30.5, ErrorClass.AUTH)  # still broken
    assert breaker.blocked is ErrorClass.AUTH
    assert not breaker.take_probe(59.0)
    assert breaker.take_probe(60.5)
    breaker.probe_succeeded(60.6)
    assert breaker.blocked is None
    assert seen[0] == (CircuitState.OPEN, ErrorClass.AUTH)
    assert seen[-1] == (CircuitState.CLOSED, None)


def test_scope_of_tells_metas_failures_from_a_recipients() -> None:
    assert scope_of(GraphApiError("ReadTimeout", error_class=ErrorClass.TRANSIENT, ambiguous=True)) is SERVICE
    assert scope_of(GraphApiError("x", code=2, http_status=503)) is SERVICE
    assert scope_of(GraphApiError("x", code=131016, http_status=500)) is SERVICE
    assert scope_of(GraphApiError("bad gateway", http_status=502)) is SERVICE
    assert scope_of(GraphApiError("x", code=131000, http_status=500)) is RECIPIENT
