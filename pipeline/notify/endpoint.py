"""One endpoint's queue, breaker and concurrency limit, drained by its own pump task (see delivery.py).

    endpoint = Endpoint("https://hooks.example.com:443", dispatcher)
    endpoint.enqueue(delivery)        # never blocks; a full queue dead-letters the overflow
    endpoint.sweep()                  # every second: expire old heads, report depth and oldest age

Lanes: one per customer (`CallbackEvent.order_key`), one delivery in flight per lane, so a customer's
events arrive in order while other customers' go out concurrently. A lane is IDLE, READY (in the
ready queue), WAITING (in the timer heap, for a backoff or an order hold) or BUSY (its head in flight);
heap and queue entries of a lane whose state moved on are skipped rather than removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from pipeline.contracts.vocabulary import (
    CallbackAttemptResult,
    CallbackEventType,
    CallbackOutcome,
    CircuitState,
    DeadLetterReason,
)
from pipeline.notify.deliveries import Answer, Delivery
from pipeline.notify.policy import Breaker, Verdict, judge
from pipeline.notify.settings import Subscription
from pipeline.observability import get_logger

if TYPE_CHECKING:
    from pipeline.notify.delivery import Dispatcher

log = get_logger(__name__)

_RESULTS_REMEMBERED = 100_000  # request ids whose send result an endpoint has seen (order holds)


class _LaneState(Enum):
    IDLE = 0
    READY = 1
    WAITING = 2
    BUSY = 3


@dataclass(slots=True, eq=False)
class _Lane:
    key: str
    items: deque[Delivery] = field(default_factory=deque)
    state: _LaneState = _LaneState.IDLE
    due: float = 0.0


class Endpoint:
    """One origin's queue, breaker and concurrency limit, drained by its own pump task."""

    def __init__(self, origin: str, dispatcher: Dispatcher) -> None:
        self.origin = origin
        self._d = dispatcher
        config = dispatcher.config
        self.breaker = Breaker(config.breaker_failures, config.breaker_reset_seconds)
        self._lanes: dict[str, _Lane] = {}
        self._ready: deque[_Lane] = deque()
        self._waiting: list[tuple[float, int, _Lane]] = []
        self._seq = itertools.count()
        self._results: OrderedDict[str, None] = OrderedDict()
        self.size = 0  # deliveries queued here, in flight included
        self.in_flight = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._shown_state = CircuitState.CLOSED
        self._pump = asyncio.create_task(self._run(), name=f"notify-endpoint-{origin}")

    # --- queueing --------------------------------------------------------------------------------

    def enqueue(self, delivery: Delivery) -> None:
        config = self._d.config
        if self.size >= config.queue_limit:
            self._spawn(self._dead_letter(delivery, DeadLetterReason.CALLBACK_BACKLOG_FULL))
            return
        event = delivery.event
        now = self._d.clock()
        if event.type is CallbackEventType.SEND_RESULT and event.request_id:
            self._remember_result(event.request_id)
        elif event.request_id and event.received_at is not None and config.order_hold_seconds > 0 \
                and event.request_id not in self._results:
            wait = event.received_at.timestamp() + config.order_hold_seconds - self._d.wall()
            if wait > 0:
                delivery.hold_until = now + wait
        self.size += 1
        lane = self._lanes.get(event.order_key)
        if lane is None:
            lane = self._lanes[event.order_key] = _Lane(event.order_key)
        if event.type is CallbackEventType.SEND_RESULT and event.request_id and lane.items:
            self._insert_before_statuses(lane, delivery)
        else:
            lane.items.append(delivery)
        if lane.state is _LaneState.WAITING and lane.items[0] is delivery:
            lane.state = _LaneState.IDLE  # a result jumped ahead of a held status: no need to wait
        if lane.state is _LaneState.IDLE:
            self._schedule(lane, now)

    def _remember_result(self, request_id: str) -> None:
        self._results[request_id] = None
        if len(self._results) > _RESULTS_REMEMBERED:
            self._results.popitem(last=False)

    def _insert_before_statuses(self, lane: _Lane, delivery: Delivery) -> None:
        """A send result goes before the statuses of its request that overtook it (not yet sent)."""
        first = 1 if lane.state is _LaneState.BUSY else 0
        for index in range(first, len(lane.items)):
            if lane.items[index].event.request_id == delivery.event.request_id:
                lane.items.insert(index, delivery)
                return
        lane.items.append(delivery)

    def _schedule(self, lane: _Lane, now: float) -> None:
        head = lane.items[0]
        held = head.hold_until if head.event.request_id not in self._results else 0.0
        due = max(head.not_before, held)
        if due <= now:
            if lane.state is not _LaneState.READY:
                lane.state = _LaneState.READY
                self._ready.append(lane)
                self._wake.set()
        else:
            lane.state, lane.due = _LaneState.WAITING, due
            heapq.heappush(self._waiting, (due, next(self._seq), lane))
            self._wake.set()

    # --- the pump --------------------------------------------------------------------------------

    async def _run(self) -> None:
        config = self._d.config
        while True:
            now = self._d.clock()
            while self._waiting and self._waiting[0][0] <= now:
                due, _, lane = heapq.heappop(self._waiting)
                if lane.state is _LaneState.WAITING and lane.due == due:
                    lane.state = _LaneState.IDLE
                    self._schedule(lane, now)
            while self._ready and self.in_flight < config.concurrency:
                lane = self._ready[0]
                if lane.state is not _LaneState.READY or self._drop_dead(lane, now):
                    self._ready.popleft()
                    continue
                if not self.breaker.allow(now):
                    break
                self._ready.popleft()
                lane.state = _LaneState.BUSY
                self.in_flight += 1
                self._spawn(self._attempt(lane, lane.items[0]))
            self._show_breaker()
            self._wake.clear()
            timeout = None
            if self._waiting:
                timeout = self._waiting[0][0] - now
            if self._ready and self.in_flight < config.concurrency and self.breaker.state is CircuitState.OPEN:
                reopen = self.breaker.reopens_at() - now
                timeout = reopen if timeout is None else min(timeout, reopen)
            # asyncio.timeout rather than wait_for: wait_for wraps the wait in a task, one per wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if timeout is None else max(timeout, 0.001)):
                    await self._wake.wait()

    def _drop_dead(self, lane: _Lane, now: float) -> bool:
        """Drop deliveries of revoked partitions from the lane's head; True when the lane needs no slot now."""
        while lane.items and not lane.items[0].source.lease.alive:
            self.size -= 1
            self._d.finish(lane.items.popleft())  # the tracker ignores it; the memory is released
        if not lane.items:
            lane.state = _LaneState.IDLE
            self._lanes.pop(lane.key, None)
            return True
        return False

    async def _attempt(self, lane: _Lane, delivery: Delivery) -> None:
        d = self._d
        delivery.attempts += 1
        started = d.clock()
        try:
            answer = await d.poster.post(delivery)
        except Exception as exc:  # a bug in the poster must not lose the delivery
            log.error("callback_post_failed", endpoint=self.origin, error=str(exc), exc_info=exc)
            answer = Answer(None, error=type(exc).__name__)
        now = d.clock()
        verdict = judge(answer.status, answer.retry_after, timed_out=answer.timed_out)
        if verdict.result is not CallbackAttemptResult.SUCCESS:
            delivery.last_answer = answer.describe()  # only a dead letter ever reads it
        self.breaker.record(verdict.breaker_failure, now, verdict.after if verdict.breaker_failure else None)
        d.hooks.attempted(self.origin, verdict.result, now - started)
        self.in_flight -= 1
        lane.state = _LaneState.IDLE
        await self._settle(lane, delivery, verdict, now)
        self._show_breaker()
        self._wake.set()

    async def _settle(self, lane: _Lane, delivery: Delivery, verdict: Verdict, now: float) -> None:
        d = self._d
        if verdict.result is CallbackAttemptResult.SUCCESS:
            self._pop(lane, delivery, now)
            d.hooks.finished(self.origin, CallbackOutcome.DELIVERED, None)
            d.finish(delivery)
            return
        if verdict.result is CallbackAttemptResult.GONE:
            self._pop(lane, delivery, now)
            d.disable(delivery.subscription)
            await self._dead_letter(delivery, DeadLetterReason.CALLBACK_GONE)
            return
        if d.is_disabled(delivery.subscription):  # another of its calls got 410 meanwhile
            self._pop(lane, delivery, now)
            await self._dead_letter(delivery, DeadLetterReason.CALLBACK_GONE)
            return
        age = d.wall() - delivery.source.timestamp
        if delivery.attempts >= d.config.max_attempts or age >= d.config.max_age_seconds:
            self._pop(lane, delivery, now)
            await self._dead_letter(delivery, DeadLetterReason.CALLBACK_UNDELIVERABLE)
            return
        delivery.not_before = now + d.config.backoff.delay(delivery.attempts, verdict.after, random.random)
        d.hooks.retried(self.origin)
        self._schedule(lane, now)

    def _pop(self, lane: _Lane, delivery: Delivery, now: float) -> None:
        self.size -= 1
        if lane.items and lane.items[0] is delivery:
            lane.items.popleft()
        if lane.items:
            self._schedule(lane, now)
        else:
            self._lanes.pop(lane.key, None)

    async def _dead_letter(self, delivery: Delivery, reason: DeadLetterReason, *, queued: bool = False) -> None:
        try:
            await self._d.dead_letters.dead_letter(delivery, reason)
        finally:
            if queued:
                self.size -= 1
        self._d.hooks.finished(self.origin, CallbackOutcome.DEAD_LETTERED, reason)
        self._d.finish(delivery)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _show_breaker(self) -> None:
        if self.breaker.state is not self._shown_state:
            self._shown_state = self.breaker.state
            self._d.hooks.breaker(self.origin, self.breaker.state)
            log.info("callback_breaker", endpoint=self.origin, state=self.breaker.state.value)

    # --- upkeep ----------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Dead-letter expired lane heads that wait (the breaker may keep them from ever failing),
        and report depth and the oldest waiting event's age."""
        d = self._d
        wall, now = d.wall(), d.clock()
        oldest = 0.0
        for lane in list(self._lanes.values()):
            expired = False
            while lane.state is not _LaneState.BUSY and lane.items and \
                    wall - lane.items[0].source.timestamp >= d.config.max_age_seconds:
                expired = True
                self._spawn(self._dead_letter(lane.items.popleft(), DeadLetterReason.CALLBACK_UNDELIVERABLE,
                                              queued=True))
            if not lane.items:
                if lane.state is not _LaneState.BUSY:
                    lane.state = _LaneState.IDLE
                    self._lanes.pop(lane.key, None)
                continue
            if expired:
                lane.state = _LaneState.IDLE  # a new head: its own backoff and hold decide (stale entries skip)
            if lane.state is _LaneState.IDLE:
                self._schedule(lane, now)
            oldest = max(oldest, wall - lane.items[0].source.timestamp)
        d.hooks.backlog(self.origin, self.size, oldest)

    def remove_subscription(self, subscription: Subscription) -> list[Delivery]:
        """Take every waiting delivery of `subscription` out of the queue (it answered 410)."""
        taken: list[Delivery] = []
        for lane in list(self._lanes.values()):
            keep: deque[Delivery] = deque()
            for index, delivery in enumerate(lane.items):
                busy_head = index == 0 and lane.state is _LaneState.BUSY
                if delivery.subscription is subscription and not busy_head:
                    taken.append(delivery)
                else:
                    keep.append(delivery)
            lane.items = keep
            if not keep and lane.state is not _LaneState.BUSY:
                lane.state = _LaneState.IDLE
                self._lanes.pop(lane.key, None)
        return taken

    def dead_letter_later(self, delivery: Delivery, reason: DeadLetterReason) -> None:
        self._spawn(self._dead_letter(delivery, reason, queued=True))

    async def aclose(self) -> None:
        self._pump.cancel()
        tasks = [*self._tasks, self._pump]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
