"""Ambiguous sends resolved by Meta's own status webhooks, not guessed.

    watch = StatusWatch()
    watch.expect(request_id)                       # at dispatch: a status may come before the answer
    watch.forget(request_id)                       # the call had a clear answer
    wamid = await watch.resolve(request_id, 60.0)  # ambiguous: the wamid if a status came, else None
    watch.seen(request_id, wamid)                  # from StatusFeed, for every status on status.events

    feed = StatusFeed(settings, watch); await feed.start(); ...; await feed.stop()

A call that failed after its request was written (a disconnect, a read timeout) may or may not
have sent the message. Meta echoes `biz_opaque_callback_data`, which carries the request id
(`CallbackData`), on every status webhook; the ingest stage puts those on `status.events` with
`request_id`. So the sender parks such a request for `ambiguous_window_seconds`: a status for its
request id within the window means Meta has it (outcome `sent`, with that status' wamid); none
means it was not sent, and it is retried. What it costs: the ambiguous few wait up to the window
(their recipients' later messages wait behind them, to keep order). What remains: Meta accepting a
message and never posting a status for it within the window (or the ingest being down that long),
which turns into one duplicate; `delivery_ambiguous_attempts_total` and the sandbox's send log
count them.

Only request ids that are in flight or parked are remembered, so the watch costs two dict
operations per message whatever the status traffic.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings
from pipeline.observability import get_logger
from pipeline.topics import TopicCatalog

log = get_logger(__name__)


class StatusWatch:
    def __init__(self) -> None:
        self._expected: dict[str, str | None] = {}  # request id -> wamid of a status seen meanwhile
        self._waiting: dict[str, asyncio.Future[str]] = {}

    def expect(self, request_id: str) -> None:
        self._expected.setdefault(request_id, None)

    def forget(self, request_id: str) -> None:
        self._expected.pop(request_id, None)

    def seen(self, request_id: str, wamid: str) -> None:
        """A status for `request_id` arrived (any status: sent, delivered, read and failed all prove a send)."""
        waiter = self._waiting.get(request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(wamid)
        elif request_id in self._expected and self._expected[request_id] is None:
            self._expected[request_id] = wamid

    async def resolve(self, request_id: str, window: float) -> str | None:
        """The wamid Meta reported for `request_id` within `window` seconds, or None (not sent)."""
        early = self._expected.pop(request_id, None)
        if early is not None:
            return early
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        try:
            return await asyncio.wait_for(waiter, window)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(request_id, None)

    @property
    def parked(self) -> int:
        return len(self._waiting)


class StatusFeed:
    """Reads `status.events` from its end (no group: every replica sees every status) into a `StatusWatch`.

    Reading from the end is enough: a parked request was dispatched by this process after it started.
    Only `request_id` and `wamid` are read from each record; anything else (or a bad record) is skipped.
    """

    def __init__(self, settings: Settings, watch: StatusWatch) -> None:
        self._topic = TopicCatalog(settings.kafka).status_events
        self._watch = watch
        self._consumer = AIOKafkaConsumer(
            self._topic, **settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
            auto_offset_reset="latest", isolation_level="read_committed", fetch_max_wait_ms=200,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=1000)
            except Exception as exc:  # the broker is away: the parked requests wait out their window
                log.warning("status_feed_error", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    self._take(record.value)

    def _take(self, value: bytes | None) -> None:
        try:
            event = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        request_id, wamid = event.get("request_id"), event.get("wamid")
        if isinstance(request_id, str) and isinstance(wamid, str):
            self._watch.seen(request_id, wamid)
