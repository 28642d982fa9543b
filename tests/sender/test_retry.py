"""What each Graph API error does to the request, its recipient and its number."""

from __future__ import annotations

import random

import pytest

from pipeline.contracts import CircuitState, DeadLetterReason, ErrorClass, MessageOutcome, SendRequest
from pipeline.sender.breaker import CircuitBreaker, Scope
from pipeline.sender.limits import RateLimiter
from pipeline.sender.retry import Effects, Hold, Judgement, Park, Retry, RetryPolicy, Terminal
from pipeline.sender.work import Origin, Work
from pipeline.whatsapp import GraphApiError


def work(deadline: float | None = None) -> Work:
    request = SendRequest(to="+16505551234", message={"type": "text", "text": {"body": "hi"}})
    origin = Origin("t", 0, 0, None, (), b"")
    return Work(request, "106540352242922", origin, received=0.0, deadline=deadline)


def error(code: int | None, cls: ErrorClass | None = None, **kw: object) -> GraphApiError:
    return GraphApiError("x", code=code, error_class=cls, **kw)  # type: ignore[arg-type]


@pytest.fixture
def policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=30.0, pair_interval=6.0, rng=random.Random(1))


@pytest.fixture
def limiter() -> RateLimiter:
    return RateLimiter(80.0)


@pytest.fixture
def breaker() -> CircuitBreaker:
    return CircuitBreaker(threshold=5, reset_seconds=60.0)


def test_transient_retries_with_growing_jittered_backoff_then_fails(policy, limiter, breaker) -> None:
    w = work()
    delays = []
    for _ in range(3):
        verdict = policy.settle(w, error(131000), 0.0, limiter=limiter, breaker=breaker)
        assert isinstance(verdict, Retry)
        delays.append(verdict.delay)
        breaker.record_success(0.0, "+16505550000")  # other calls succeed in between: breaker stays closed
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert 2.0 <= delays[2] <= 4.0
    final = policy.settle(w, error(131000), 0.0, limiter=limiter, breaker=breaker)
    assert final == Terminal(MessageOutcome.FAILED, w.last_error)
    assert w.last_error is not None
    assert w.last_error.code == 131000


def test_a_retry_that_would_start_after_expiry_expires_now(policy, limiter, breaker) -> None:
    w = work(deadline=0.3)
    verdict = policy.settle(w, error(2), 0.0, limiter=limiter, breaker=breaker)
    assert isinstance(verdict, Terminal)
    assert verdict.outcome is MessageOutcome.EXPIRED


def test_failures_while_the_breaker_is_open_cost_no_attempts(policy, limiter, breaker) -> None:
    for n in range(4):
        breaker.record_failure(0.0, f"+1650555000{n}", Scope.SERVICE)
    w = work()
    verdict = policy.settle(w, error(None, http_status=503), 0.0, limiter=limiter, breaker=breaker)
    assert breaker.state is CircuitState.OPEN
    assert verdict == Retry(0.0)
    assert w.charged == 0
    for _ in range(20):  # a long outage: the probe keeps failing
        assert isinstance(policy.settle(w, error(2), 0.0, limiter=limiter, breaker=breaker), Retry)


def test_ambiguous_timeouts_are_parked_for_their_status_unless_retrying_them_is_allowed(limiter, breaker) -> None:
    # Replaced (issue 13, finding 7): an ambiguous timeout used to fail; now its status decides.
    timeout = error(None, ErrorClass.TRANSIENT, ambiguous=True)
    strict = RetryPolicy(retry_ambiguous=False, ambiguous_window=60.0)
    assert strict.settle(work(), timeout, 0.0, limiter=limiter, breaker=breaker) == Park(60.0)
    lenient = RetryPolicy(retry_ambiguous=True)
    assert isinstance(lenient.settle(work(), timeout, 0.0, limiter=limiter, breaker=breaker), Retry)
    unsent = work()
    judgement = strict.unsent(unsent, 61.0, circuit=breaker.state)
    judgement.apply_to(unsent)
    assert isinstance(judgement.verdict, Retry)
    assert unsent.charged == 1


def test_130429_slows_the_number_and_retries(policy, limiter, breaker) -> None:
    verdict = policy.settle(work(), error(130429), 5.0, limiter=limiter, breaker=breaker)
    assert isinstance(verdict, Retry)
    assert limiter.rate == 78.4  # 2 % less


def test_account_rate_limits_pause_the_whole_number_for_metas_wait(policy, limiter, breaker) -> None:
    verdict = policy.settle(work(), error(80007, retry_after=60.0), 5.0, limiter=limiter, breaker=breaker)
    assert verdict == Retry(60.0)
    assert limiter.acquire(30.0) > 0
    assert limiter.acquire(65.0) == 0.0


def test_131056_delays_grow_for_that_recipient(policy, limiter, breaker) -> None:
    w = work(deadline=1000.0)
    delays = [policy.settle(w, error(131056), 0.0, limiter=limiter, breaker=breaker) for _ in range(3)]
    assert [round(d.delay / 6.0) for d in delays if isinstance(d, Retry)] == [1, 2, 4]
    assert limiter.rate == 80.0  # the number is not slowed


@pytest.mark.parametrize(("code", "cls"), [(190, ErrorClass.AUTH), (0, ErrorClass.AUTH), (368, ErrorClass.POLICY),
                                            (131031, ErrorClass.POLICY)])
def test_auth_and_policy_hold_the_request_and_block_the_number(policy, limiter, breaker, code, cls) -> None:
    w = work()
    for _ in range(10):
        assert policy.settle(w, error(code), 0.0, limiter=limiter, breaker=breaker) == Hold()
    assert w.charged == 0  # the backlog is not burned
    assert breaker.blocked is cls


def test_invalid_payloads_are_dead_lettered_and_recipient_errors_fail(policy, limiter, breaker) -> None:
    invalid = policy.settle(work(), error(100), 0.0, limiter=limiter, breaker=breaker)
    assert isinstance(invalid, Terminal)
    assert invalid.outcome is MessageOutcome.DEAD_LETTERED
    assert invalid.reason is DeadLetterReason.PAYLOAD_REJECTED
    for code in (131026, 131047, 132001, 10, 131050):
        verdict = policy.settle(work(), error(code), 0.0, limiter=limiter, breaker=breaker)
        assert isinstance(verdict, Terminal)
        assert verdict.outcome is MessageOutcome.FAILED
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failures == 0


def test_a_failing_recipient_is_charged_and_backs_off_on_its_own_while_the_number_stays_up(
    policy, limiter, breaker
) -> None:
    w = work(deadline=1000.0)
    delays = []
    for _ in range(3):
        verdict = policy.settle(w, error(131000, http_status=500), 0.0, limiter=limiter, breaker=breaker)
        assert isinstance(verdict, Retry)
        delays.append(verdict.delay)
    assert breaker.state is CircuitState.CLOSED
    assert w.charged == 3  # bounded by max_attempts, unlike an outage
    assert delays[0] < delays[2]
    final = policy.settle(w, error(131000, http_status=500), 0.0, limiter=limiter, breaker=breaker)
    assert isinstance(final, Terminal)
    assert final.outcome is MessageOutcome.FAILED



def test_judge_and_effects_change_nothing_they_return_what_to_change(policy, limiter, breaker) -> None:
    w = work(deadline=1000.0)
    assert policy.effects(error(130429)) == Effects(success=True, throttle=True)
    assert policy.effects(error(80007, retry_after=30.0)) == Effects(success=True, pause=30.0)
    assert policy.effects(error(190)) == Effects(block=ErrorClass.AUTH)
    assert policy.effects(error(2)) == Effects(failure=Scope.SERVICE)
    assert policy.effects(error(131000)) == Effects(failure=Scope.RECIPIENT)
    judgement = policy.judge(w, error(131056), 0.0, circuit=CircuitState.CLOSED)
    assert judgement.charge
    assert judgement.pair_strike
    assert judgement.error is not None
    assert (w.charged, w.pair_strikes, w.last_error) == (0, 0, None)  # untouched until applied
    assert (limiter.rate, breaker.state, breaker.failures) == (80.0, CircuitState.CLOSED, 0)
    judgement.apply_to(w)
    assert (w.charged, w.pair_strikes, w.last_error) == (1, 1, judgement.error)


def test_a_service_failure_is_not_charged_once_the_circuit_left_closed(policy) -> None:
    w = work()
    judgement = policy.judge(w, error(2), 0.0, circuit=CircuitState.HALF_OPEN)
    assert judgement == Judgement(Retry(0.0), charge=False, error=judgement.error)
    assert policy.judge(w, error(131000), 0.0, circuit=CircuitState.HALF_OPEN).charge  # a recipient's: charged
