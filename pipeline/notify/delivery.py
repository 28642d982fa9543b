"""Per-endpoint queues: every endpoint is paced, limited and broken on its own, so no endpoint waits for another.

    dispatcher = Dispatcher(subscriptions, config, poster, dead_letters, hooks, on_finished=tracker.finish)
    dispatcher.submit(source, event)     # never blocks; `await dispatcher.room()` before submitting more
    await dispatcher.aclose()

Design (docs/callbacks.md, "Delivery"):
- An **endpoint** is a URL's origin (`https://host:port`): one breaker, one concurrency limit, one
  queue, one pump task. A dead or slow endpoint fills only its own queue.
- Inside an endpoint, deliveries wait in **lanes** keyed by the customer (`CallbackEvent.order_key`):
  one delivery per lane in flight, so one customer's events arrive in order, while different
  customers' go out concurrently up to the limit.
- A failed delivery stays at the head of its lane until its backoff ends (later events of that
  customer wait behind it: order over speed); the other lanes keep going.
- A delivery ends **delivered** or **dead-lettered** (NOTIFY_MAX_ATTEMPTS, NOTIFY_MAX_AGE_SECONDS,
  410 Gone, or a full endpoint queue); only then does its source record count as finished.

Decisions come from policy.py (pure); I/O from the `Poster` and `DeadLetters` given; metrics through
the `DeliveryHooks` object. Only `clock` and `wall` tell the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit

from pipeline.contracts.vocabulary import (
    CallbackAttemptResult,
    CallbackEventType,
    CallbackOutcome,
    CircuitState,
    DeadLetterReason,
)
from pipeline.notify.events import CallbackEvent
from pipeline.notify.policy import Backoff, Breaker, Verdict, judge
from pipeline.notify.settings import ALL_NUMBERS, NotifySettings, Subscription
from pipeline.observability import get_logger

log = get_logger(__name__)

_RESULTS_REMEMBERED = 100_000  # request ids whose send result an endpoint has seen (order holds)
_SWEEP_SECONDS = 1.0


@dataclass(slots=True, eq=False)
class Lease:
    """A partition held by this process; `alive` turns False when it is revoked."""

    alive: bool = True


_ALWAYS = Lease()


@dataclass(slots=True, eq=False)
class Source:
    """One consumed record and how many of its deliveries are still open."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # the record's Kafka timestamp (epoch seconds): the event's age counts from here
    key: bytes | None
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)
    pending: int = 0
    lease: Lease = _ALWAYS  # once revoked, its deliveries are dropped, not sent: the new owner sends them


@dataclass(slots=True, eq=False)
class Delivery:
    event: CallbackEvent
    body: bytes
    source: Source
    subscription: Subscription
    hold_until: float = 0.0  # monotonic: a status waiting for its send result
    not_before: float = 0.0  # monotonic: backoff
    attempts: int = 0
    last_answer: str = "no attempt yet"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST got: an HTTP status, or none (`error` says why)."""

    status: int | None
    retry_after: str | None = None
    body: str = ""
    timed_out: bool = False
    error: str | None = None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer: {self.error or 'connection failed'}"
        return f"HTTP {self.status}" + (f": {self.body}" if self.body else "")


class Poster(Protocol):
    async def post(self, delivery: Delivery) -> Answer: ...


class DeadLetters(Protocol):
    async def dead_letter(self, delivery: Delivery, reason: DeadLetterReason) -> None:
        """Return once the dead letter is durable (retrying as long as it takes)."""


class DeliveryHooks(Protocol):
    """Telemetry of deliveries (pipeline/notify/telemetry.py); `endpoint` is a URL origin from settings."""

    def attempted(self, endpoint: str, result: CallbackAttemptResult, seconds: float) -> None: ...
    def retried(self, endpoint: str) -> None: ...
    def finished(self, endpoint: str, outcome: CallbackOutcome, reason: DeadLetterReason | None) -> None: ...
    def breaker(self, endpoint: str, state: CircuitState) -> None: ...
    def backlog(self, endpoint: str, depth: int, oldest_age_seconds: float) -> None: ...
    def disabled(self, endpoint: str) -> None: ...


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


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


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    max_attempts: int
    max_age_seconds: float
    backoff: Backoff
    breaker_failures: int
    breaker_reset_seconds: float
    concurrency: int
    queue_limit: int
    max_buffered: int
    order_hold_seconds: float

    @classmethod
    def of(cls, notify: NotifySettings) -> DeliveryConfig:
        return cls(
            max_attempts=notify.max_attempts,
            max_age_seconds=notify.max_age_seconds,
            backoff=Backoff(notify.retry_base_seconds, notify.retry_max_seconds),
            breaker_failures=notify.breaker_failures,
            breaker_reset_seconds=notify.breaker_reset_seconds,
            concurrency=notify.concurrency_per_endpoint,
            queue_limit=notify.endpoint_queue_limit,
            max_buffered=notify.max_buffered,
            order_hold_seconds=notify.order_hold_seconds,
        )


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
        delivery.last_answer = answer.describe()
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


class Dispatcher:
    """Routes each event to its subscriptions' endpoints; counts what is buffered in all."""

    def __init__(
        self,
        subscriptions: Iterable[Subscription],
        config: DeliveryConfig,
        poster: Poster,
        dead_letters: DeadLetters,
        hooks: DeliveryHooks,
        on_finished: Callable[[Source], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.subscriptions = tuple(subscriptions)
        self.config = config
        self.poster = poster
        self.dead_letters = dead_letters
        self.hooks = hooks
        self.clock = clock
        self.wall = wall
        self._on_finished = on_finished
        self._by_number: dict[str, list[Subscription]] = {}
        for subscription in self.subscriptions:
            self._by_number.setdefault(subscription.phone_number_id, []).append(subscription)
        self._disabled: set[Subscription] = set()
        self._endpoints: dict[str, Endpoint] = {}
        self.buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._sweeper: asyncio.Task[None] | None = None

    def endpoint(self, subscription: Subscription) -> Endpoint:
        origin = origin_of(subscription.url)
        endpoint = self._endpoints.get(origin)
        if endpoint is None:
            endpoint = self._endpoints[origin] = Endpoint(origin, self)
            if self._sweeper is None:
                self._sweeper = asyncio.create_task(self._sweep(), name="notify-sweep")
        return endpoint

    def matching(self, event: CallbackEvent) -> list[Subscription]:
        candidates = self._by_number.get(event.phone_number_id or "", []) + self._by_number.get(ALL_NUMBERS, [])
        return [s for s in candidates if s.wants(event.type.value)]

    def submit(self, source: Source, event: CallbackEvent | None) -> None:
        """Queue the event's deliveries; a source with none is finished at once."""
        targets = self.matching(event) if event is not None else []
        if event is None or not targets:
            self._on_finished(source)
            return
        body = event.body()
        source.pending = len(targets)
        self.buffered += 1
        if self.buffered >= self.config.max_buffered:
            self._room.clear()
        for subscription in targets:
            delivery = Delivery(event, body, source, subscription)
            endpoint = self.endpoint(subscription)
            if subscription in self._disabled:
                endpoint.size += 1
                endpoint.dead_letter_later(delivery, DeadLetterReason.CALLBACK_GONE)
            else:
                endpoint.enqueue(delivery)

    async def room(self) -> None:
        """Wait while NOTIFY_MAX_BUFFERED records are in memory (memory's bound, reached only when
        every endpoint is far behind: one slow endpoint is bounded by its own queue limit first)."""
        await self._room.wait()

    def finish(self, delivery: Delivery) -> None:
        source = delivery.source
        source.pending -= 1
        if source.pending == 0:
            self._release()
            self._on_finished(source)

    def _release(self) -> None:
        self.buffered -= 1
        if self.buffered < self.config.max_buffered:
            self._room.set()

    def is_disabled(self, subscription: Subscription) -> bool:
        return subscription in self._disabled

    def disable(self, subscription: Subscription) -> None:
        """410 Gone: no more calls to this subscription until restart; its waiting events are dead-lettered."""
        if subscription in self._disabled:
            return
        self._disabled.add(subscription)
        endpoint = self.endpoint(subscription)
        self.hooks.disabled(endpoint.origin)
        log.error("callback_subscription_disabled", subscription=subscription.name,
                  reason="the endpoint answered 410 Gone")
        for delivery in endpoint.remove_subscription(subscription):
            endpoint.dead_letter_later(delivery, DeadLetterReason.CALLBACK_GONE)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            for endpoint in list(self._endpoints.values()):
                endpoint.sweep()

    def sweep_now(self) -> None:
        for endpoint in self._endpoints.values():
            endpoint.sweep()

    def depth(self) -> dict[str, int]:
        return {origin: endpoint.size for origin, endpoint in self._endpoints.items()}

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for endpoint in self._endpoints.values():
            await endpoint.aclose()
