"""Routing events to per-endpoint queues: each endpoint is paced, limited and broken on its own.

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
the `DeliveryHooks` object (deliveries.py); the queues themselves in endpoint.py. Only `clock` and
`wall` tell the time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from pipeline.contracts.vocabulary import DeadLetterReason
from pipeline.notify.deliveries import DeadLetters, Delivery, DeliveryConfig, DeliveryHooks, Poster, Source, origin_of
from pipeline.notify.endpoint import Endpoint
from pipeline.notify.events import CallbackEvent
from pipeline.notify.settings import ALL_NUMBERS, Subscription
from pipeline.observability import get_logger

log = get_logger(__name__)

_SWEEP_SECONDS = 1.0


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
        self._endpoint_of: dict[int, Endpoint] = {}  # id(subscription): the settings keep them alive
        self._matching: dict[tuple[str, str], list[Subscription]] = {}
        self.buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._sweeper: asyncio.Task[None] | None = None

    def endpoint(self, subscription: Subscription) -> Endpoint:
        endpoint = self._endpoint_of.get(id(subscription))
        if endpoint is None:
            origin = origin_of(subscription.url)
            endpoint = self._endpoints.get(origin)
            if endpoint is None:
                endpoint = self._endpoints[origin] = Endpoint(origin, self)
                if self._sweeper is None:
                    self._sweeper = asyncio.create_task(self._sweep(), name="notify-sweep")
            self._endpoint_of[id(subscription)] = endpoint
        return endpoint

    def matching(self, event: CallbackEvent) -> list[Subscription]:
        key = (event.phone_number_id or "", event.type.value)
        found = self._matching.get(key)
        if found is None:  # per (number, type): a deployment has few of each, and this runs per event
            candidates = self._by_number.get(key[0], []) + self._by_number.get(ALL_NUMBERS, [])
            found = self._matching[key] = [s for s in candidates if s.wants(key[1])]
            if len(self._matching) > 100_000:
                self._matching.clear()
        return found

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
