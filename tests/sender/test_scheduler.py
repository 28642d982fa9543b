"""The scheduler under a fake clock: order per recipient, limits, breaker pauses, expiry, revocation."""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Callable
from itertools import count, pairwise

import pytest

from pipeline.contracts import ErrorClass, SendRequest
from pipeline.sender.breaker import CircuitBreaker, Scope
from pipeline.sender.limits import RateLimiter
from pipeline.sender.scheduler import Lane, MessageRejected, Scheduler
from pipeline.sender.work import Origin, Work
from tests.sender.checks import max_in_window

NUMBER = "106540352242922"
_offsets = count()


def make_work(to: str, n: int, partition: int = 0, deadline: float | None = None, number: str = NUMBER) -> Work:
    request = SendRequest(request_id=f"{to[-4:]}-{n}", to=to, message={"type": "text", "text": {"body": str(n)}})
    return Work(request, number, Origin("t", partition, next(_offsets), None, (), b""), received=0.0,
                deadline=deadline)


def scheduler(rate: float = 1000.0, max_in_flight: int = 50, max_buffered: int = 100_000,
              threshold: int = 5, reset: float = 10.0) -> Scheduler:
    return Scheduler(
        lambda number: Lane(number, RateLimiter(rate), CircuitBreaker(threshold, reset)),
        max_in_flight=max_in_flight, max_buffered=max_buffered,
    )


Answer = Callable[[Work, float], str]  # "ok" | "pair" | "down"


class Simulation:
    """Discrete events: calls take `latency` s; the answer function plays Meta."""

    def __init__(self, sched: Scheduler, answer: Answer, latency: float = 0.2) -> None:
        self.s = sched
        self.answer = answer
        self.latency = latency
        self.now = 0.0
        self.sent: list[tuple[float, Work]] = []  # accepted by "Meta", in order
        self.calls: list[tuple[float, Work]] = []  # every call that reached "Meta"
        self.max_in_flight = 0
        self._events: list[tuple[float, int, Work | Lane]] = []
        self.probes: list[float] = []
        self.health: Callable[[float], bool] = lambda now: True
        self._seq = count()

    def run(self, until: float) -> None:
        while self.now <= until:
            batch = self.s.poll(self.now)
            for lane in batch.probes:  # the breaker's health probe: Meta answers it after `latency`
                self.probes.append(self.now)
                heapq.heappush(self._events, (self.now + self.latency, next(self._seq), lane))
            for work in batch.dispatch:
                assert self.s.lanes[work.number].limiter.send(self.now) == 0.0
                self.calls.append((self.now, work))
                heapq.heappush(self._events, (self.now + self.latency, next(self._seq), work))
            self.max_in_flight = max(self.max_in_flight, self.s.in_flight)
            candidates = [t for t in (self.s.next_wake, self._events[0][0] if self._events else None) if t is not None]
            if not candidates:
                return
            self.now = max(self.now, min(candidates))
            while self._events and self._events[0][0] <= self.now:
                _, _, item = heapq.heappop(self._events)
                if isinstance(item, Lane):
                    if self.health(self.now):
                        item.breaker.probe_succeeded(self.now)
                    else:
                        item.breaker.probe_failed(self.now, ErrorClass.TRANSIENT)
                    self.s.probed(item.number)
                else:
                    self.complete(item)

    def complete(self, work: Work) -> None:
        lane = self.s.lanes[work.number]
        what = self.answer(work, self.now)
        if what == "ok":
            lane.breaker.record_success(self.now, work.recipient)
            self.sent.append((self.now, work))
            self.s.finished(work, self.now)
        elif what == "pair":
            self.s.retry(work, self.now + 6.0, self.now)
        elif what == "down":
            lane.breaker.record_failure(self.now, work.recipient, Scope.SERVICE)
            self.s.retry(work, self.now, self.now)


def ok(work: Work, now: float) -> str:
    return "ok"


def test_per_recipient_order_holds_under_concurrency_and_retries() -> None:
    rng = random.Random(3)
    s = scheduler(max_in_flight=40)
    recipients = [f"+1650555{i:04d}" for i in range(50)]
    expected: dict[str, list[str]] = defaultdict(list)
    for n in range(1000):
        to = rng.choice(recipients)
        work = make_work(to, n)
        expected[to].append(work.request.request_id)
        s.submit(work, 0.0)
    flaky = random.Random(5)
    sim = Simulation(s, lambda w, now: "down" if flaky.random() < 0.1 else "ok")
    sim.run(until=120.0)
    got: dict[str, list[str]] = defaultdict(list)
    for _, work in sim.sent:
        got[work.recipient].append(work.request.request_id)
    assert got == expected
    assert sim.max_in_flight <= 40
    assert s.buffered == 0
    assert s.in_flight == 0


def test_one_recipient_is_never_called_twice_at_once() -> None:
    s = scheduler(max_in_flight=100)
    for n in range(20):
        s.submit(make_work("+16505550001", n), 0.0)
    batch = s.poll(0.0)
    assert len(batch.dispatch) == 1


def test_rate_holds_in_every_window_and_throughput_follows_it() -> None:
    s = scheduler(rate=80.0, max_in_flight=300)
    for n in range(400):
        s.submit(make_work(f"+1650555{n:04d}", n), 0.0)
    sim = Simulation(s, ok)
    sim.run(until=10.0)
    times = [t for t, _ in sim.calls]
    assert max_in_window(times) <= 80
    assert len(times) >= 80 * 4.9  # ~5 s of work at the full rate


def test_a_pair_limited_recipient_waits_alone() -> None:
    s = scheduler(rate=1000.0, max_in_flight=300)
    for n in range(5):
        s.submit(make_work("+16505559056", n), 0.0)
    for n in range(200):
        s.submit(make_work(f"+1650555{n:04d}", 100 + n), 0.0)
    strikes = {"left": 2}

    def answer(work: Work, now: float) -> str:
        if work.recipient == "+16505559056" and strikes["left"]:
            strikes["left"] -= 1
            return "pair"
        return "ok"

    sim = Simulation(s, answer)
    sim.run(until=60.0)
    others = [t for t, w in sim.sent if w.recipient != "+16505559056"]
    slow = [t for t, w in sim.sent if w.recipient == "+16505559056"]
    assert max(others) < 1.0  # everybody else was done within a second
    assert min(slow) >= 12.0  # two 6 s waits
    assert [w.request.request_id for _, w in sim.sent if w.recipient == "+16505559056"] == [
        f"9056-{n}" for n in range(5)
    ]


def test_an_outage_opens_the_breaker_holds_the_work_and_probes_once_per_interval() -> None:
    s = scheduler(rate=1000.0, max_in_flight=300, threshold=5, reset=10.0)
    for n in range(500):
        s.submit(make_work(f"+1650555{n:04d}", n), 0.0)
    outage_until = 45.0
    sim = Simulation(s, lambda w, now: "down" if now < outage_until else "ok", latency=0.05)
    sim.health = lambda now: now >= outage_until  # the GET of the number fails during the outage too
    sim.run(until=200.0)
    during = [t for t, _ in sim.calls if t < outage_until]
    # the first call fails at 0.05 s; by then the limiter let ~50 go (healthy until then)
    first_failure = 0.05
    after_first = [t for t in during if t > first_failure]
    assert len(after_first) <= 4 + 4  # suspect cap: ≤ threshold-1 more, then only probes
    assert [t for t in during if t > 1.0] == []  # probes are health calls, never messages
    probes = [t for t in sim.probes if t < outage_until]
    assert 1 <= len(probes) <= outage_until // 10 + 1
    assert all(b - a >= 10.0 for a, b in pairwise(probes))
    assert len(sim.sent) == 500  # the backlog drained after recovery; nothing dropped
    assert s.buffered == 0


def test_expired_heads_are_not_sent_and_waiting_ones_are_swept() -> None:
    s = scheduler(rate=1.0)
    s.submit(make_work("+16505550001", 0), 0.0)
    s.submit(make_work("+16505550002", 1, deadline=0.5), 0.0)  # will wait for the 1/s limiter
    s.submit(make_work("+16505550001", 2, deadline=0.5), 0.0)  # behind recipient 1's head
    first = s.poll(0.0)
    assert [w.request.request_id for w in first.dispatch] == ["0001-0"]
    assert sorted(w.request.request_id for w in s.sweep(0.6)) == ["0001-2", "0002-1"]
    s.finished(first.dispatch[0], 0.7)
    assert s.buffered == 0


def test_expired_head_found_at_dispatch() -> None:
    s = scheduler()
    s.submit(make_work("+16505550001", 0, deadline=1.0), 0.0)
    s.submit(make_work("+16505550001", 1), 0.0)
    batch = s.poll(2.0)
    assert [w.request.request_id for w in batch.expired] == ["0001-0"]
    assert [w.request.request_id for w in batch.dispatch] == ["0001-1"]


def test_backpressure_is_a_typed_exception() -> None:
    s = scheduler(max_buffered=3)
    for n in range(3):
        s.submit(make_work("+16505550001", n), 0.0)
    with pytest.raises(MessageRejected, match="max_buffered"):
        s.submit(make_work("+16505550001", 3), 0.0)


def test_revoke_drops_queued_work_of_lost_partitions_but_keeps_calls_in_flight() -> None:
    s = scheduler()
    kept = make_work("+16505550001", 0, partition=0)
    lost_head = make_work("+16505550002", 1, partition=1)
    lost_tail = make_work("+16505550002", 2, partition=1)
    lost_other = make_work("+16505550003", 3, partition=1)
    for w in (kept, lost_head, lost_tail):
        s.submit(w, 0.0)
    batch = s.poll(0.0)
    assert lost_head in batch.dispatch
    s.submit(lost_other, 0.0)
    dropped = s.revoke({1})
    assert set(dropped) == {lost_tail, lost_other}
    assert s.buffered == 2  # kept (in flight) + lost_head (in flight)
    s.finished(lost_head, 0.1)
    assert s.buffered == 1
    assert not s.poll(0.2).dispatch


def test_lanes_are_independent() -> None:
    s = scheduler(threshold=1, reset=100.0)
    a, b = "106540352242922", "106540352242933"
    s.submit(make_work("+16505550001", 0, number=a), 0.0)
    s.submit(make_work("+16505550002", 1, number=a), 0.0)
    s.submit(make_work("+16505550003", 2, number=b), 0.0)
    first = s.poll(0.0).dispatch
    work_a = next(w for w in first if w.number == a)
    s.lanes[a].breaker.record_failure(0.1, work_a.recipient, Scope.SERVICE)  # number a is down
    s.retry(work_a, 0.1, 0.1)
    for w in first:
        if w.number != a:
            s.finished(w, 0.1)
    s.submit(make_work("+16505550004", 3, number=b), 0.2)
    assert [w.number for w in s.poll(0.2).dispatch] == [b]


def test_numbers_share_the_in_flight_slots() -> None:
    s = scheduler(max_in_flight=10)
    a, b = "106540352242922", "106540352242933"
    for n in range(100):
        s.submit(make_work(f"+1650555{n:04d}", n, number=a), 0.0)
        s.submit(make_work(f"+1650556{n:04d}", 100 + n, number=b), 0.0)
    sim = Simulation(s, ok, latency=0.05)
    sim.run(until=0.5)
    per_number = {a: 0, b: 0}
    for _, work in sim.sent:
        per_number[work.number] += 1
    assert abs(per_number[a] - per_number[b]) <= 0.2 * max(per_number.values())


def test_a_backlog_of_failing_retries_takes_at_most_half_of_a_numbers_dispatches() -> None:
    """After a restart the old failures are retried first; fresh work must still get its share."""
    s = scheduler(rate=1000.0, max_in_flight=10)
    failing = {f"+1650{n:03d}9000" for n in range(40)}
    for n, to in enumerate(sorted(failing)):
        s.submit(make_work(to, n), 0.0)
    now, tried = 0.0, set()
    while len(tried) < 40:  # every failing head has failed once and waits to be retried
        now += 0.1
        for work in s.poll(now).dispatch:
            tried.add(work.recipient)
            s.retry(work, now, now)
    for n in range(40):
        s.submit(make_work(f"+1650555{n:04d}", 100 + n), now)
    order: list[str] = []
    while len([o for o in order if o == "fresh"]) < 40:
        now += 0.1
        for work in s.poll(now).dispatch:
            if work.recipient in failing:
                order.append("retry")
                s.retry(work, now, now)
            else:
                order.append("fresh")
                s.finished(work, now)
    first_80 = order[:80]
    assert first_80.count("fresh") >= 39  # alternating: one retry per fresh dispatch at most
    assert len(order) <= 82
