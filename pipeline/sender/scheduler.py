"""Which request goes next: per-recipient order, each number's pace and breaker, bounded in flight.

    scheduler = Scheduler(lane_factory, max_in_flight=300, max_buffered=20_000)
    scheduler.submit(work, now)          # raises MessageRejected when max_buffered requests are held
    batch = scheduler.poll(now)          # batch.dispatch: call Meta now; batch.expired: too late;
                                         # batch.probes: lanes whose breaker wants its health probe now
    scheduler.probed(number)             # the probe's verdict is in: look at that lane again
    scheduler.next_wake                  # when poll has something to do again (None: on the next event)
    scheduler.finished(work, now)        # the head's outcome is known: its recipient moves on
    scheduler.retry(work, now + 2.0)     # the head goes again later, still first in its queue
    scheduler.sweep(now)                 # expired requests that were waiting behind others
    scheduler.revoke({0, 1})             # forget the queued work of lost partitions
    scheduler.drop_lane(number)          # forget an idle number this process no longer owns
    scheduler.drop_idle_lanes(keep=owned)   # forget every idle lane whose number `owned(number)` is not: their numbers
    lane = Lane.configured(number, settings.sender, on_circuit_change=print, on_rate_decrease=print)

Contract (the sender's order guarantee): requests to one recipient from one business number are
kept in one FIFO; only its head is ever dispatched, and only when no call for that recipient is in
flight. A retried head keeps its place, so later requests to that recipient wait behind it and
everyone else keeps flowing. Each number is a `Lane` with its own rate limiter, breaker and queue
of recipients that are ready; a lane blocked by its limiter or breaker does not hold others up.

Fresh work and retries share a number fairly: recipients whose head is a retry wait in their own
ready queue, and while both queues hold someone the lane alternates between them, so a backlog of
failing retries (after a restart, say) can take at most half of a number's dispatches.

`poll` is synchronous and takes the time as an argument, so the whole policy runs under a fake
clock in tests; the engine calls it from one event-loop callback and turns `next_wake` into one
timer. Nothing here sleeps or creates a task per waiting request.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import count

from pipeline.config import SenderSettings
from pipeline.sender.breaker import CircuitBreaker, CircuitChange
from pipeline.sender.limits import RateLimiter
from pipeline.sender.work import Work

# A limiter that wants to wake us again in 0.3 ms would cost a timer per send at 1,000/s; its
# small burst allowance absorbs this much lateness instead.
MIN_TIMER_SECONDS = 0.004


class MessageRejected(Exception):  # arroyo's name for backpressure
    """Backpressure: the scheduler holds `max_buffered` requests; stop fetching until some finish."""


class Recipient:
    __slots__ = ("busy", "key", "not_before", "queue", "retrying", "scheduled")

    def __init__(self, key: str) -> None:
        self.key = key
        self.queue: deque[Work] = deque()
        self.busy = False  # its head is in flight
        self.scheduled = False  # in one of the lane's ready deques or its timer heap
        self.retrying = False  # its head has been tried before (it waits in `retry_ready`)
        self.not_before = 0.0


class Lane:
    """One business number: its recipients, pace and breaker."""

    @classmethod
    def configured(cls, number: str, s: SenderSettings, *, on_circuit_change: Callable[[CircuitChange], None],
                   on_rate_decrease: Callable[[float], None]) -> Lane:
        """A number's lane with its limiter and breaker as the settings say, each with its change listener."""
        breaker = CircuitBreaker(
            s.breaker_failure_threshold,
            s.breaker_reset_seconds,
            blocked_probe_seconds=s.blocked_probe_seconds,
            failure_ratio=s.breaker_failure_ratio,
            min_calls=s.breaker_min_calls,
            min_recipients=s.breaker_min_recipients,
            window_seconds=s.breaker_window_seconds,
            recipient_memory_seconds=max(600.0, s.retry_max_delay_seconds * 2),
            on_change=on_circuit_change,
        )
        limiter = RateLimiter(s.rate_per_second, guard=s.rate_window_guard_seconds, on_decrease=on_rate_decrease)
        return cls(number, limiter, breaker)

    def __init__(self, number: str, limiter: RateLimiter, breaker: CircuitBreaker) -> None:
        self.number = number
        self.limiter = limiter
        self.breaker = breaker
        self.recipients: dict[str, Recipient] = {}
        self.ready: deque[Recipient] = deque()  # heads never tried
        self.retry_ready: deque[Recipient] = deque()  # heads to try again
        self.retry_turn = False  # alternate between the two while both hold someone
        self.timers: list[tuple[float, int, Recipient]] = []
        self.in_flight = 0
        self.queued = 0
        self.blocked_until = 0.0  # limiter or breaker wait: skip the lane until then

    @property
    def has_ready(self) -> bool:
        return bool(self.ready or self.retry_ready)

    def ready_for(self, recipient: Recipient) -> deque[Recipient]:
        return self.retry_ready if recipient.retrying else self.ready


@dataclass(slots=True)
class Batch:
    dispatch: list[Work] = field(default_factory=list)
    expired: list[Work] = field(default_factory=list)
    probes: list[Lane] = field(default_factory=list)


LaneFactory = Callable[[str], Lane]


class Scheduler:
    def __init__(self, lane_factory: LaneFactory, *, max_in_flight: int, max_buffered: int) -> None:
        self._new_lane = lane_factory
        self.lanes: dict[str, Lane] = {}
        self.max_in_flight = max_in_flight
        self.max_buffered = max_buffered
        self.in_flight = 0
        self.buffered = 0  # requests held: queued or in flight
        self.next_wake: float | None = None
        self._seq = count()
        self._turn = 0

    # --- intake -------------------------------------------------------------------------------------

    def lane(self, number: str) -> Lane:
        lane = self.lanes.get(number)
        if lane is None:
            lane = self.lanes[number] = self._new_lane(number)
        return lane

    def submit(self, work: Work, now: float) -> None:
        if self.buffered >= self.max_buffered:
            raise MessageRejected(f"{self.buffered} requests held (max_buffered)")
        lane = self.lane(work.number)
        recipient = lane.recipients.get(work.recipient)
        if recipient is None:
            recipient = lane.recipients[work.recipient] = Recipient(work.recipient)
        recipient.queue.append(work)
        lane.queued += 1
        self.buffered += 1
        if not recipient.busy and not recipient.scheduled:
            self._schedule(lane, recipient, now)

    # --- dispatch -----------------------------------------------------------------------------------

    def poll(self, now: float) -> Batch:
        """Everything that may start now, within the limits; sets `next_wake`."""
        batch = Batch()
        wake = math.inf
        lanes = list(self.lanes.values())
        if len(lanes) > 1:
            # Start with a different number each time, so that none gets the in-flight slots first.
            self._turn = (self._turn + 1) % len(lanes)
            lanes = lanes[self._turn:] + lanes[: self._turn]
        for lane in lanes:
            timers = lane.timers
            while timers and timers[0][0] <= now:
                _, _, recipient = heapq.heappop(timers)
                lane.ready_for(recipient).append(recipient)
            if lane.has_ready and now >= lane.blocked_until:
                self._drain_lane(lane, now, batch)
            if lane.has_ready and lane.breaker.take_probe(now):
                lane.blocked_until = math.inf  # messages wait for the probe's verdict (`probed`)
                batch.probes.append(lane)
            if lane.has_ready and lane.blocked_until > now:
                wake = min(wake, lane.blocked_until)
            if timers:
                wake = min(wake, timers[0][0])
        self.next_wake = None if wake == math.inf else max(wake, now + MIN_TIMER_SECONDS)
        return batch

    def _drain_lane(self, lane: Lane, now: float, batch: Batch) -> None:
        lane.blocked_until = 0.0
        while lane.has_ready and self.in_flight < self.max_in_flight:
            if lane.ready and lane.retry_ready:
                ready = lane.retry_ready if lane.retry_turn else lane.ready
            else:
                ready = lane.ready or lane.retry_ready
            recipient = ready[0]
            head = recipient.queue[0]
            if head.deadline is not None and head.deadline <= now:
                self._pop_head(lane, recipient)
                batch.expired.append(head)
                if not recipient.queue:
                    ready.popleft()
                    recipient.scheduled = False
                    self._forget_if_idle(lane, recipient, now)
                continue
            wait = lane.breaker.admit(now, lane.in_flight)
            if wait == 0.0:
                wait = lane.limiter.acquire(now)
            if wait > 0.0:
                # math.inf: the breaker waits for a call in flight or its probe; `finished`, `retry`
                # and `probed` clear it.
                lane.blocked_until = now + wait
                return
            lane.retry_turn = ready is lane.ready  # the other queue's turn next
            ready.popleft()
            recipient.scheduled = False
            recipient.busy = True
            lane.in_flight += 1
            self.in_flight += 1
            head.dispatched_at = now
            batch.dispatch.append(head)

    # --- results ------------------------------------------------------------------------------------

    def finished(self, work: Work, now: float) -> None:
        """The in-flight head reached an outcome: drop it; its recipient's next request may go."""
        lane, recipient = self._returning(work)
        self._pop_head(lane, recipient)
        recipient.retrying = False
        if recipient.queue:
            self._schedule(lane, recipient, now)
        else:
            self._forget_if_idle(lane, recipient, now)

    def retry(self, work: Work, at: float, now: float) -> None:
        """The in-flight head goes again at `at` (it stays first; its recipient waits with it)."""
        lane, recipient = self._returning(work)
        recipient.not_before = max(recipient.not_before, at)
        recipient.retrying = True
        self._schedule(lane, recipient, now)

    def park(self, work: Work) -> None:
        """The in-flight head's fate is unknown: free its call slot, keep its recipient waiting behind it."""
        _, recipient = self._returning(work)
        recipient.busy = True  # nothing else for this recipient goes until the head's fate is known

    def unpark(self, work: Work) -> None:
        """The parked head is decided: it is in flight again for `finished` or `retry` to take back."""
        lane = self.lanes[work.number]
        assert lane.recipients[work.recipient].queue[0] is work, "only a parked head can be unparked"
        lane.in_flight += 1
        self.in_flight += 1

    def probed(self, number: str) -> None:
        """The breaker's probe for `number` has its verdict: the lane may dispatch (or wait) again."""
        lane = self.lanes.get(number)
        if lane is not None and lane.blocked_until == math.inf:
            lane.blocked_until = 0.0

    def sweep(self, now: float) -> list[Work]:
        """Remove queued (not in-flight) requests whose deadline passed, wherever they wait.

        Heads are checked at dispatch; this finds the ones stuck behind a stopped number or a
        waiting head (call it every second or so). It also forgets recipients that are idle.
        """
        expired: list[Work] = []
        for lane in self.lanes.values():
            for recipient in list(lane.recipients.values()):
                queue = recipient.queue
                if not queue:
                    self._forget_if_idle(lane, recipient, now)
                    continue
                keep_head = recipient.busy
                if not any(w.deadline is not None and w.deadline <= now for w in queue):
                    continue
                kept: deque[Work] = deque()
                for index, work in enumerate(queue):
                    if (index == 0 and keep_head) or work.deadline is None or work.deadline > now:
                        kept.append(work)
                    else:
                        expired.append(work)
                removed = len(queue) - len(kept)
                recipient.queue = kept
                lane.queued -= removed
                self.buffered -= removed
                if not kept:
                    self._unschedule(lane, recipient)
                    self._forget_if_idle(lane, recipient, now)
        return expired

    # --- rebalance ----------------------------------------------------------------------------------

    def revoke(self, partitions: Iterable[int]) -> list[Work]:
        """Forget the queued work of `partitions` and return it; calls in flight stay until they return.

        The engine decides what an in-flight call's answer is worth once its partition is gone.
        """
        lost = set(partitions)
        dropped: list[Work] = []
        for lane in self.lanes.values():
            for key, recipient in list(lane.recipients.items()):
                queue = recipient.queue
                if not any(w.origin.partition in lost for w in queue):
                    continue
                kept: deque[Work] = deque()
                for index, work in enumerate(queue):
                    if work.origin.partition not in lost or (index == 0 and recipient.busy):
                        kept.append(work)
                        continue
                    dropped.append(work)
                    lane.queued -= 1
                    self.buffered -= 1
                recipient.queue = kept
                if not kept:
                    self._unschedule(lane, recipient)
                    del lane.recipients[key]
        return dropped

    def drop_lane(self, number: str) -> None:
        """Forget an idle lane (its number moved to another replica); `lane()` makes a fresh one if it comes back."""
        lane = self.lanes.get(number)
        if lane is not None:
            assert not lane.queued, "only an idle lane can be dropped"
            assert not lane.in_flight, "only an idle lane can be dropped"
            del self.lanes[number]

    def drop_idle_lanes(self, keep: Callable[[str], bool]) -> list[str]:
        """Drop every idle lane whose number `keep` refuses (see `drop_lane`); returns their numbers."""
        idle = [n for n, lane in self.lanes.items() if not lane.queued and not lane.in_flight and not keep(n)]
        for number in idle:
            self.drop_lane(number)
        return idle

    # --- helpers ------------------------------------------------------------------------------------

    def _returning(self, work: Work) -> tuple[Lane, Recipient]:
        lane = self.lanes[work.number]
        recipient = lane.recipients[work.recipient]
        assert recipient.busy, "only the in-flight head can return"
        assert recipient.queue[0] is work, "only the in-flight head can return"
        recipient.busy = False
        lane.in_flight -= 1
        self.in_flight -= 1
        if lane.blocked_until == math.inf:
            lane.blocked_until = 0.0  # the breaker waited for this call
        return lane, recipient

    def _pop_head(self, lane: Lane, recipient: Recipient) -> None:
        recipient.queue.popleft()
        lane.queued -= 1
        self.buffered -= 1

    def _schedule(self, lane: Lane, recipient: Recipient, now: float) -> None:
        recipient.scheduled = True
        if recipient.not_before <= now:
            lane.ready_for(recipient).append(recipient)
        else:
            heapq.heappush(lane.timers, (recipient.not_before, next(self._seq), recipient))

    def _unschedule(self, lane: Lane, recipient: Recipient) -> None:
        if not recipient.scheduled:
            return
        recipient.scheduled = False
        if recipient in lane.ready:
            lane.ready.remove(recipient)
        elif recipient in lane.retry_ready:
            lane.retry_ready.remove(recipient)
        else:
            lane.timers = [t for t in lane.timers if t[2] is not recipient]
            heapq.heapify(lane.timers)

    def _forget_if_idle(self, lane: Lane, recipient: Recipient, now: float) -> None:
        # A recipient still serving a 131056 delay is kept, so its next request waits it out too.
        if not recipient.queue and not recipient.busy and recipient.not_before <= now:
            lane.recipients.pop(recipient.key, None)
