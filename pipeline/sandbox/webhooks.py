"""Posts signed webhooks in the background, so the send path only pushes onto a heap.

    dispatcher = WebhookDispatcher(lambda: live_settings, metrics)
    await dispatcher.start()
    dispatcher.push(0.5, "106540352242922", status_item)     # posted ~0.5 s from now
    dispatcher.post_value("106540352242922", inbound_value)  # posted at once
    await dispatcher.stop()

Statuses due at about the same time are batched into one POST per business number (up to
`webhook_batch_max`), as Meta does under load. A POST answered with anything but 2xx (or not answered)
is retried with exponential backoff, the same bytes and signature, up to `webhook_max_attempts`.
Memory is bounded by `webhook_queue_limit` events not yet acknowledged; past it new events are dropped
and counted.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from pipeline.sandbox import payloads
from pipeline.sandbox.metrics import SandboxMetrics
from pipeline.sandbox.settings import SandboxSettings

log = logging.getLogger(__name__)

_LINGER = 0.01  # fire the timer at most every 10 ms, so that busy seconds give fat batches
_MAX_BACKOFF = 300.0


@dataclass(slots=True)
class _Delivery:
    phone_number_id: str
    value: dict[str, Any]
    kinds: list[str]  # status kinds inside (empty for inbound messages)
    events: int
    generation: int = 0
    attempt: int = 1
    body: bytes = b""


class WebhookDispatcher:
    def __init__(self, live: Callable[[], SandboxSettings], metrics: SandboxMetrics) -> None:
        self._live = live
        self._metrics = metrics
        self._heap: list[tuple[float, int, str, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._retries: set[asyncio.TimerHandle] = set()
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.pending = 0
        self._generation = 0  # bumped by clear(): deliveries of an older generation no longer count
        self.counts: Counter[str] = Counter()
        self.log: deque[dict[str, Any]] = deque(maxlen=2000)

    async def start(self) -> None:
        settings = self._live()
        # No connection cap beyond the workers: each worker holds at most one request.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers={"User-Agent": "facebookexternalua"}
        )
        self._workers = [asyncio.create_task(self._work()) for _ in range(settings.webhook_concurrency)]

    async def stop(self) -> None:
        self.clear()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def clear(self) -> None:
        """Forget everything not yet posted (reset)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        self._heap.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
        self.pending = 0
        self._generation += 1
        self.counts.clear()
        self.log.clear()
        self._metrics.webhook_pending.set(0)

    # --- enqueue (called on the send path: no awaiting, no I/O) -------------------------------------

    def _admit(self, events: int) -> bool:
        if self.pending + events > self._live().webhook_queue_limit:
            self.counts["dropped_events"] += events
            self._metrics.webhook_dropped.inc(events)
            return False
        self.pending += events
        self._metrics.webhook_pending.set(self.pending)
        return True

    def push(self, delay: float, phone_number_id: str, status: dict[str, Any]) -> None:
        if not self._admit(1):
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        heapq.heappush(self._heap, (due, next(self._seq), phone_number_id, status))
        if due < self._timer_at:
            self._arm(loop, due)

    def post_value(self, phone_number_id: str, value: dict[str, Any]) -> None:
        if self._admit(1):
            self._queue.put_nowait(_Delivery(phone_number_id, value, [], 1, self._generation))

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._timer, self._timer_at = None, math.inf
        due: dict[str, list[dict[str, Any]]] = {}
        while self._heap and self._heap[0][0] <= now:
            _, _, number, status = heapq.heappop(self._heap)
            due.setdefault(number, []).append(status)
        settings = self._live()
        meta_of = settings.display_phone_number
        for number, statuses in due.items():
            for start in range(0, len(statuses), settings.webhook_batch_max):
                chunk = statuses[start : start + settings.webhook_batch_max]
                value = payloads.status_value(payloads.metadata(meta_of, number), chunk)
                self._queue.put_nowait(
                    _Delivery(number, value, [s["status"] for s in chunk], len(chunk), self._generation)
                )
        if self._heap:
            self._arm(loop, max(self._heap[0][0], now + _LINGER))

    # --- post -----------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self._post(delivery)
            except Exception:  # a bug here must not kill the worker and silently stop all webhooks
                log.exception("webhook worker error")
                self._finish(delivery, "given_up")

    async def _post(self, delivery: _Delivery) -> None:
        settings = self._live()
        if settings.webhook_url is None or self._session is None:
            self._finish(delivery, "dropped")
            return
        if not delivery.body:
            delivery.body = orjson.dumps(payloads.envelope(settings.waba_id, [delivery.value]))
        secret = settings.app_secret.get_secret_value()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": payloads.sign(secret, delivery.body),
            "X-Hub-Signature": payloads.sign_sha1(secret, delivery.body),
        }
        started = time.time()
        try:
            async with self._session.post(
                settings.webhook_url, data=delivery.body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds),
            ) as response:
                await response.read()
                answer: int | str = response.status
                ok = 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer, ok = type(exc).__name__, False
        self.log.append({
            "at": started, "attempt": delivery.attempt, "answer": answer, "ok": ok,
            "phone_number_id": delivery.phone_number_id, "statuses": delivery.kinds,
            "inbound": not delivery.kinds, "bytes": len(delivery.body),
        })
        if ok:
            self._metrics.webhook_posts.labels("ok").inc()
            for kind in delivery.kinds:
                self._metrics.webhook_statuses.labels(kind).inc()
            self.counts.update(f"delivered_{kind}" for kind in delivery.kinds)
            self._finish(delivery, "posted")
            return
        self._metrics.webhook_posts.labels("failed").inc()
        self.counts["failed_attempts"] += 1
        if delivery.attempt >= settings.webhook_max_attempts:
            self._metrics.webhook_posts.labels("given_up").inc()
            self._finish(delivery, "given_up")
            return
        delay = min(settings.webhook_retry_base_seconds * 2 ** (delivery.attempt - 1), _MAX_BACKOFF)
        delivery.attempt += 1
        self.counts["retries"] += 1
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def requeue() -> None:
            self._retries.discard(handle)
            if delivery.generation == self._generation:
                self._queue.put_nowait(delivery)

        handle = loop.call_later(delay, requeue)
        self._retries.add(handle)

    def _finish(self, delivery: _Delivery, outcome: str) -> None:
        if delivery.generation != self._generation:
            return
        self.counts[outcome] += 1
        if outcome in ("dropped", "given_up"):
            self.counts["dropped_events"] += delivery.events
            self._metrics.webhook_dropped.inc(delivery.events)
        self.pending -= delivery.events
        self._metrics.webhook_pending.set(self.pending)

    def summary(self) -> dict[str, Any]:
        return {"pending": self.pending, "scheduled": len(self._heap), **self.counts}
