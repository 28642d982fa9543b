"""Per-endpoint queues without Kafka or HTTP: a scripted poster stands in for the endpoints."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from pipeline.contracts import DeliveryStatus
from pipeline.contracts.vocabulary import CallbackAttemptResult, CallbackOutcome, CircuitState, DeadLetterReason
from pipeline.notify.deliveries import Answer, Delivery, DeliveryConfig, Lease, Source
from pipeline.notify.delivery import Dispatcher
from pipeline.notify.events import CallbackEvent, from_inbound, from_send_result, from_status
from pipeline.notify.policy import Backoff
from pipeline.notify.settings import Subscription
from tests.notify.conftest import NUMBER, OTHER_NUMBER, inbound, result, status

SLOW = "https://slow.example.com/hook"
FAST = "https://fast.example.com/hook"


def sub(url: str, number: str = NUMBER, events: frozenset[str] = frozenset({"*"})) -> Subscription:
    return Subscription(phone_number_id=number, url=url, secret="s" * 16, events=events)


def config(**changes: object) -> DeliveryConfig:
    values: dict[str, object] = {
        "max_attempts": 5, "max_age_seconds": 3600.0, "backoff": Backoff(0.01, 0.05), "breaker_failures": 100,
        "breaker_reset_seconds": 0.2, "concurrency": 8, "queue_limit": 1000, "max_buffered": 10_000,
        "order_hold_seconds": 0.0,
    }
    values.update(changes)
    return DeliveryConfig(**values)  # type: ignore[arg-type]


Script = Callable[[Delivery], Awaitable[Answer]]


async def ok(_: Delivery) -> Answer:
    return Answer(200)


@dataclass
class Poster:
    scripts: dict[str, Script] = field(default_factory=dict)
    calls: list[tuple[float, str, str, int]] = field(default_factory=list)  # (time, url, event id, attempt)
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    async def post(self, delivery: Delivery) -> Answer:
        url = delivery.subscription.url
        self.calls.append((time.monotonic(), url, delivery.event.event_id, delivery.attempts))
        self.in_flight[url] += 1
        self.most_in_flight[url] = max(self.most_in_flight[url], self.in_flight[url])
        try:
            return await self.scripts.get(url, ok)(delivery)
        finally:
            self.in_flight[url] -= 1


@dataclass
class Letters:
    letters: list[tuple[str, DeadLetterReason, str, int]] = field(default_factory=list)

    async def dead_letter(self, delivery: Delivery, reason: DeadLetterReason) -> None:
        self.letters.append((delivery.event.event_id, reason, delivery.last_answer, delivery.attempts))


@dataclass
class Hooks:
    attempts: list[tuple[str, CallbackAttemptResult]] = field(default_factory=list)
    outcomes: list[tuple[str, CallbackOutcome]] = field(default_factory=list)
    states: list[tuple[str, CircuitState]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    depths: dict[str, tuple[int, float]] = field(default_factory=dict)
    retries: int = 0

    def attempted(self, endpoint: str, result: CallbackAttemptResult, seconds: float) -> None:
        self.attempts.append((endpoint, result))

    def retried(self, endpoint: str) -> None:
        self.retries += 1

    def finished(self, endpoint: str, outcome: CallbackOutcome, reason: DeadLetterReason | None) -> None:
        self.outcomes.append((endpoint, outcome))

    def breaker(self, endpoint: str, state: CircuitState) -> None:
        self.states.append((endpoint, state))

    def backlog(self, endpoint: str, depth: int, oldest_age_seconds: float) -> None:
        self.depths[endpoint] = (depth, oldest_age_seconds)

    def disabled(self, endpoint: str) -> None:
        self.gone.append(endpoint)


class Harness:
    def __init__(self, subscriptions: list[Subscription], **changes: object) -> None:
        self.poster = Poster()
        self.letters = Letters()
        self.hooks = Hooks()
        self.finished: list[int] = []
        self.dispatcher = Dispatcher(subscriptions, config(**changes), self.poster, self.letters, self.hooks,
                                     lambda source: self.finished.append(source.offset))
        self._offset = 0

    def submit(self, event: CallbackEvent, *, age: float = 0.0, lease: Lease | None = None) -> Source:
        self._offset += 1
        source = Source("t.send.results", 0, self._offset, time.time() - age, b"k", b"v", lease=lease or Lease())
        self.dispatcher.submit(source, event)
        return source

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.005)


def text_event(n: int, sender: str = "16505551234", number: str = NUMBER) -> CallbackEvent:
    return from_inbound(inbound(f"wamid.{sender}.{n}", sender=sender, number=number))


async def test_a_slow_endpoint_does_not_delay_another() -> None:
    harness = Harness([sub(SLOW), sub(FAST, OTHER_NUMBER)], concurrency=2)

    async def slow(_: Delivery) -> Answer:
        await asyncio.sleep(5.0)
        return Answer(200)

    harness.poster.scripts[SLOW] = slow
    for n in range(20):
        harness.submit(text_event(n, sender=f"1650555{n:04d}"))
    started = time.monotonic()
    for n in range(50):
        harness.submit(text_event(n, sender=f"1650666{n:04d}", number=OTHER_NUMBER))
    await harness.until(lambda: sum(1 for c in harness.poster.calls if c[1] == FAST) == 50)
    assert time.monotonic() - started < 2.0
    assert harness.poster.most_in_flight[SLOW] == 2  # the slow one is held to its own limit
    await harness.dispatcher.aclose()


async def test_concurrency_per_endpoint_is_bounded_and_one_customer_goes_one_at_a_time() -> None:
    harness = Harness([sub(FAST)], concurrency=4)
    order: list[str] = []

    async def record(delivery: Delivery) -> Answer:
        await asyncio.sleep(0.01)
        order.append(delivery.event.wamid or "")
        return Answer(200)

    harness.poster.scripts[FAST] = record
    for n in range(10):
        harness.submit(text_event(n, sender="16505550001"))
    for n in range(30):
        harness.submit(text_event(0, sender=f"1650777{n:04d}"))
    await harness.until(lambda: len(order) == 40)
    assert harness.poster.most_in_flight[FAST] == 4
    assert [w for w in order if w.startswith("wamid.16505550001.")] == [f"wamid.16505550001.{n}" for n in range(10)]
    await harness.dispatcher.aclose()


async def test_failures_are_retried_with_backoff_and_later_events_of_that_customer_wait() -> None:
    harness = Harness([sub(FAST)])
    answers = iter([Answer(503), Answer(None, error="refused"), Answer(200)])

    async def flaky(delivery: Delivery) -> Answer:
        return next(answers) if delivery.event.wamid == "wamid.16505551234.0" else Answer(200)

    harness.poster.scripts[FAST] = flaky
    first, second = text_event(0), text_event(1)
    harness.submit(first)
    harness.submit(second)
    await harness.until(lambda: len(harness.finished) == 2)
    ids = [c[2] for c in harness.poster.calls]
    assert ids == [first.event_id] * 3 + [second.event_id]  # the second waited behind the first
    assert [c[3] for c in harness.poster.calls[:3]] == [1, 2, 3]
    assert harness.hooks.retries == 2
    assert [r for _, r in harness.hooks.attempts] == [
        CallbackAttemptResult.SERVER_ERROR, CallbackAttemptResult.CONNECT_ERROR,
        CallbackAttemptResult.SUCCESS, CallbackAttemptResult.SUCCESS,
    ]
    await harness.dispatcher.aclose()


async def test_retry_after_is_honoured() -> None:
    harness = Harness([sub(FAST)])
    answers = iter([Answer(429, retry_after="1"), Answer(200)])

    async def throttled(_: Delivery) -> Answer:
        return next(answers)

    harness.poster.scripts[FAST] = throttled
    harness.submit(text_event(0))
    await harness.until(lambda: len(harness.finished) == 1)
    (first, *_), (second, *_) = harness.poster.calls
    assert second - first >= 0.95  # the backoff alone would have been ≤ 10 ms
    await harness.dispatcher.aclose()


async def test_after_max_attempts_the_event_is_dead_lettered_with_the_last_answer() -> None:
    harness = Harness([sub(FAST)], max_attempts=3)

    async def broken(_: Delivery) -> Answer:
        return Answer(500, body="database down")

    harness.poster.scripts[FAST] = broken
    event = text_event(0)
    harness.submit(event)
    harness.submit(text_event(1))
    await harness.until(lambda: len(harness.finished) == 2)
    assert harness.letters.letters[0] == (event.event_id, DeadLetterReason.CALLBACK_UNDELIVERABLE,
                                          "HTTP 500: database down", 3)
    assert len(harness.poster.calls) == 6
    await harness.dispatcher.aclose()


async def test_an_event_older_than_max_age_is_dead_lettered_after_its_next_failure() -> None:
    harness = Harness([sub(FAST)], max_age_seconds=60.0)

    async def broken(_: Delivery) -> Answer:
        return Answer(502)

    harness.poster.scripts[FAST] = broken
    harness.submit(text_event(0), age=61.0)
    await harness.until(lambda: len(harness.finished) == 1)
    assert len(harness.poster.calls) == 1
    assert harness.letters.letters[0][1:3] == (DeadLetterReason.CALLBACK_UNDELIVERABLE, "HTTP 502")
    await harness.dispatcher.aclose()


async def test_the_sweep_dead_letters_events_that_aged_out_behind_an_open_breaker() -> None:
    harness = Harness([sub(FAST)], max_age_seconds=1.0, breaker_failures=1, breaker_reset_seconds=3600.0)

    async def down(_: Delivery) -> Answer:
        return Answer(None, error="refused")

    harness.poster.scripts[FAST] = down
    harness.submit(text_event(0))
    await harness.until(lambda: harness.hooks.states[-1:] == [("https://fast.example.com:443", CircuitState.OPEN)])
    harness.submit(text_event(0, sender="16505550099"))  # never tried: the breaker is open
    await harness.until(lambda: len(harness.finished) == 2, timeout=5)
    assert len(harness.poster.calls) == 1
    assert {reason for _, reason, _, _ in harness.letters.letters} == {DeadLetterReason.CALLBACK_UNDELIVERABLE}
    await harness.dispatcher.aclose()


async def test_the_breaker_stops_calls_to_a_failing_endpoint_and_a_probe_reopens_it() -> None:
    # The reset outlasts the 0.3 s look below by a margin a loaded event loop cannot eat.
    harness = Harness([sub(FAST)], breaker_failures=3, breaker_reset_seconds=1.5, concurrency=1,
                      backoff=Backoff(0.001, 0.002))
    up = False

    async def outage(_: Delivery) -> Answer:
        return Answer(200) if up else Answer(None, error="refused")

    harness.poster.scripts[FAST] = outage
    for n in range(5):
        harness.submit(text_event(0, sender=f"1650888{n:04d}"))
    await harness.until(lambda: (("https://fast.example.com:443", CircuitState.OPEN) in harness.hooks.states))
    calls = len(harness.poster.calls)
    await asyncio.sleep(0.3)
    assert len(harness.poster.calls) == calls == 3  # open: nothing goes out
    up = True
    await harness.until(lambda: len(harness.finished) == 5)
    states = [s for _, s in harness.hooks.states]
    assert states == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    assert not harness.letters.letters  # waiting behind a breaker costs no attempts
    await harness.dispatcher.aclose()


async def test_410_disables_the_subscription_and_dead_letters_its_events() -> None:
    gone_sub = sub(SLOW)
    harness = Harness([gone_sub, sub(FAST)], concurrency=1)

    async def gone(_: Delivery) -> Answer:
        await asyncio.sleep(0.05)
        return Answer(410)

    harness.poster.scripts[SLOW] = gone
    for n in range(3):
        harness.submit(text_event(n))
    await harness.until(lambda: len(harness.finished) == 3)
    harness.submit(text_event(9))
    await harness.until(lambda: len(harness.finished) == 4)
    assert harness.hooks.gone == ["https://slow.example.com:443"]
    assert [c[1] for c in harness.poster.calls].count(SLOW) == 1  # one 410, then no more calls
    reasons = [reason for _, reason, _, _ in harness.letters.letters]
    assert reasons == [DeadLetterReason.CALLBACK_GONE] * 4
    assert [c[1] for c in harness.poster.calls].count(FAST) == 4  # the other subscription is untouched
    await harness.dispatcher.aclose()


async def test_a_full_endpoint_queue_dead_letters_the_overflow_only() -> None:
    harness = Harness([sub(SLOW), sub(FAST, OTHER_NUMBER)], queue_limit=3, concurrency=1)
    release = asyncio.Event()

    async def stuck(_: Delivery) -> Answer:
        await release.wait()
        return Answer(200)

    harness.poster.scripts[SLOW] = stuck
    for n in range(5):
        harness.submit(text_event(n))
    harness.submit(text_event(0, number=OTHER_NUMBER))
    await harness.until(lambda: len(harness.letters.letters) == 2 and len(harness.finished) == 3)
    assert {reason for _, reason, _, _ in harness.letters.letters} == {DeadLetterReason.CALLBACK_BACKLOG_FULL}
    release.set()
    await harness.until(lambda: len(harness.finished) == 6)
    await harness.dispatcher.aclose()


async def test_a_send_result_goes_before_statuses_that_overtook_it() -> None:
    harness = Harness([sub(FAST)], order_hold_seconds=5.0)
    sent = from_status(status("wamid.X", DeliveryStatus.SENT, "req_X"))
    delivered = from_status(status("wamid.X", DeliveryStatus.DELIVERED, "req_X"))
    harness.submit(sent)
    harness.submit(delivered)
    await asyncio.sleep(0.2)
    assert harness.poster.calls == []  # held: the request's result has not been seen
    outcome = from_send_result(result("req_X", "wamid.X"))
    harness.submit(outcome)
    await harness.until(lambda: len(harness.finished) == 3, timeout=2.0)
    assert [c[2] for c in harness.poster.calls] == [outcome.event_id, sent.event_id, delivered.event_id]
    await harness.dispatcher.aclose()


async def test_a_held_status_goes_alone_when_no_result_comes() -> None:
    harness = Harness([sub(FAST)], order_hold_seconds=1.0)
    harness.submit(from_status(status("wamid.Y", DeliveryStatus.SENT, "req_Y")))
    harness.submit(text_event(0, sender="16505559999"))  # another customer is not held
    await harness.until(lambda: len(harness.finished) == 1, timeout=0.8)
    await harness.until(lambda: len(harness.finished) == 2, timeout=2.0)
    await harness.dispatcher.aclose()


async def test_subscriptions_filter_by_number_and_event_type() -> None:
    statuses_only = sub(FAST, events=frozenset({"status.*"}))
    everything = sub(SLOW, number="*")
    harness = Harness([statuses_only, everything])
    harness.submit(text_event(0))
    harness.submit(from_status(status("wamid.Z", DeliveryStatus.READ, None)))
    harness.submit(text_event(0, number="999999999"))
    await harness.until(lambda: len(harness.finished) == 3)
    by_url = [(c[1], c[2]) for c in harness.poster.calls]
    assert sum(1 for url, _ in by_url if url == FAST) == 1
    assert sum(1 for url, _ in by_url if url == SLOW) == 3
    await harness.dispatcher.aclose()


async def test_deliveries_of_a_revoked_partition_are_dropped_not_sent() -> None:
    harness = Harness([sub(FAST)], concurrency=1)
    release = asyncio.Event()

    async def stuck(_: Delivery) -> Answer:
        await release.wait()
        return Answer(200)

    harness.poster.scripts[FAST] = stuck
    lease = Lease()
    harness.submit(text_event(0), lease=lease)
    harness.submit(text_event(1), lease=lease)
    await harness.until(lambda: len(harness.poster.calls) == 1)
    lease.alive = False
    release.set()
    await harness.until(lambda: len(harness.finished) == 2)
    assert len(harness.poster.calls) == 1
    assert harness.dispatcher.buffered == 0
    await harness.dispatcher.aclose()


@pytest.mark.parametrize("count", [1, 200])
async def test_depth_and_oldest_age_are_reported(count: int) -> None:
    harness = Harness([sub(FAST)], concurrency=1)
    release = asyncio.Event()

    async def stuck(_: Delivery) -> Answer:
        await release.wait()
        return Answer(200)

    harness.poster.scripts[FAST] = stuck
    for n in range(count):
        harness.submit(text_event(n, sender=f"1650999{n:04d}"), age=30.0)
    harness.dispatcher.sweep_now()
    depth, oldest = harness.hooks.depths["https://fast.example.com:443"]
    assert depth == count
    assert 29.0 <= oldest <= 40.0
    release.set()
    await harness.until(lambda: len(harness.finished) == count)
    harness.dispatcher.sweep_now()
    assert harness.hooks.depths["https://fast.example.com:443"] == (0, 0.0)
    await harness.dispatcher.aclose()


def test_events_are_stamped_with_their_time() -> None:
    event = text_event(0)
    assert event.occurred_at <= datetime.now(UTC)
