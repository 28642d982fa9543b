"""The attempt step without Kafka or an engine: one call to a fake Meta, its verdict, its effects in the open."""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace

from pipeline.contracts import DeadLetterReason, ErrorClass, MessageOutcome, SendRequest
from pipeline.sender.ambiguous import StatusWatch
from pipeline.sender.attempt import SENT, Attempts
from pipeline.sender.breaker import CircuitBreaker
from pipeline.sender.limits import RateLimiter
from pipeline.sender.retry import Park, Retry, RetryPolicy, Terminal
from pipeline.sender.scheduler import Lane
from pipeline.sender.telemetry import SenderTelemetry
from pipeline.sender.work import Origin, Work
from pipeline.whatsapp import GraphApiError, SentMessage
from tests.sender.fakes import FakeMeta

NUMBER = "106540352242922"


def work(request_id: str = "req-1") -> Work:
    request = SendRequest(request_id=request_id, to="+16505551234", message={"type": "text", "text": {"body": "hi"}})
    return Work(request, NUMBER, Origin("t", 0, 0, None, (), b""), received=time.monotonic(), deadline=None)


def lane() -> Lane:
    made = Lane(NUMBER, RateLimiter(100.0), CircuitBreaker(threshold=5, reset_seconds=60.0))
    assert made.limiter.acquire(time.monotonic()) == 0.0  # the scheduler's reservation
    return made


def attempts(meta: FakeMeta, watch: StatusWatch | None = None, **policy: object) -> Attempts:
    telemetry = SenderTelemetry(trace.get_tracer("tests"), "g")
    return Attempts(meta, RetryPolicy(base_delay=0.01, **policy), watch or StatusWatch(), telemetry,  # type: ignore[arg-type]
                    clock=time.monotonic)


async def test_a_200_is_sent_with_its_wamid_and_counted_by_the_window() -> None:
    meta, w, ln = FakeMeta(latency=0.0), work(), lane()
    answer = await attempts(meta).run(w, ln, lambda: True)
    assert answer is not None
    assert answer.verdict == SENT
    assert answer.wamid is not None
    assert answer.wamid.startswith("wamid.")
    assert w.attempts == 1
    assert meta.sent_ids() == ["req-1"]
    assert ln.limiter.reserved == 0  # the reservation became a send


class CheckedAt(RateLimiter):
    """A limiter that remembers when the window was checked for a write."""

    def __init__(self) -> None:
        super().__init__(100.0)
        self.checked: list[float] = []

    def send(self, now: float) -> float:
        self.checked.append(now)
        return super().send(now)


async def test_the_window_is_checked_once_a_connection_is_ready_not_before() -> None:
    # A call that must connect first would otherwise leave later than its check says: the first
    # calls of a run, connecting together, would reach Meta bunched into the same second.
    meta, w = FakeMeta(latency=0.0, connect_seconds=0.05), work()
    limiter = CheckedAt()
    ln = Lane(NUMBER, limiter, CircuitBreaker(threshold=5, reset_seconds=60.0))
    assert limiter.acquire(time.monotonic()) == 0.0
    answer = await attempts(meta).run(w, ln, lambda: True)
    assert answer is not None
    assert answer.verdict == SENT
    assert len(meta.readied) == 1
    assert limiter.checked[0] >= meta.readied[0]


async def test_nothing_is_written_once_may_send_says_no_and_the_slot_is_given_back() -> None:
    meta, w, ln = FakeMeta(latency=0.0), work(), lane()
    assert await attempts(meta).run(w, ln, lambda: False) is None
    assert meta.calls == []
    assert w.attempts == 0
    assert ln.limiter.reserved == 0


async def test_a_130429_is_a_retry_and_the_limiter_cut_is_applied_where_it_can_be_seen() -> None:
    meta = FakeMeta(lambda request, n: GraphApiError("slow down", code=130429), latency=0.0)
    w, ln = work(), lane()
    answer = await attempts(meta).run(w, ln, lambda: True)
    assert answer is not None
    assert isinstance(answer.verdict, Retry)
    assert answer.error is not None
    assert answer.error.code == 130429
    assert ln.limiter.rate < 100.0
    assert w.charged == 1


async def test_a_bug_in_the_client_dead_letters_the_request() -> None:
    class Broken(FakeMeta):
        async def send_message(self, request: SendRequest, *, phone_number_id: str | None = None,
                               callback_data: str | None = None) -> SentMessage:
            raise RuntimeError("boom")

    answer = await attempts(Broken()).run(work(), lane(), lambda: True)
    assert answer is not None
    assert isinstance(answer.verdict, Terminal)
    assert answer.verdict.outcome is MessageOutcome.DEAD_LETTERED
    assert answer.verdict.reason is DeadLetterReason.UNEXPECTED_ERROR


@pytest.mark.parametrize("status_seen", [True, False])
async def test_an_ambiguous_call_is_parked_and_its_status_decides(status_seen: bool) -> None:
    meta = FakeMeta(lambda request, n: GraphApiError("timeout", error_class=ErrorClass.TRANSIENT, ambiguous=True),
                    latency=0.0)
    watch, w, ln = StatusWatch(), work(), lane()
    step = attempts(meta, watch, ambiguous_window=0.05)
    answer = await step.run(w, ln, lambda: True)
    assert answer is not None
    assert answer.verdict == Park(0.05)
    assert w.ambiguous_attempts == 1
    if status_seen:
        watch.seen("req-1", "wamid.from-status")
    resolved = await step.resolve(w, ln, answer)
    if status_seen:
        assert (resolved.verdict, resolved.wamid) == (SENT, "wamid.from-status")
    else:
        assert isinstance(resolved.verdict, Retry)
        assert resolved.wamid is None
