"""The notify stage wired from settings: a FastStream batch subscriber feeding per-endpoint queues.

    await serve(settings)                      # `pipeline notify`: until SIGTERM/SIGINT
    async with Notify(settings, telemetry) as notify:
        notify.ops_port                        # metrics and health (tests bind port 0)

One consumer group (NOTIFY_GROUP_ID) reads `send.results`, `status.events` and `inbound.messages`
with `AckPolicy.MANUAL`: FastStream never commits; `_commit_loop` commits, per partition, the
watermark of records whose callbacks all ended (offsets.py). The handler only parses and queues —
it never waits for an endpoint — so one slow endpoint cannot hold the consumer (docs/callbacks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from pipeline.config import Profile, Settings, SettingsError
from pipeline.contracts import DeadLetterReason, Stage, describe, field_errors
from pipeline.contracts.dead_letters import build_dead_letter
from pipeline.kafka_client import group_timeouts
from pipeline.lifecycle import release_signals, stop_on_signals
from pipeline.notify.deliveries import Delivery, DeliveryConfig, Source, origin_of
from pipeline.notify.delivery import Dispatcher
from pipeline.notify.events import event_from_record
from pipeline.notify.http import CallbackPoster
from pipeline.notify.offsets import OffsetTracker
from pipeline.notify.telemetry import NotifyTelemetry
from pipeline.notify.urls import UnsafeSubscription, UrlPolicy, check_subscriptions
from pipeline.observability import (
    OpsServer,
    Telemetry,
    get_logger,
    new_broker,
    setup,
    subscriber_consumers,
    track_lag,
)
from pipeline.topics import TopicCatalog

log = get_logger(__name__)

_REPUBLISH_SECONDS = (0.5, 1.0, 2.0, 5.0)


def url_policy(settings: Settings) -> UrlPolicy:
    return UrlPolicy(
        development=settings.profile is Profile.DEVELOPMENT,
        allow_private=settings.notify.allow_private_networks,
    )


async def check_safe_subscriptions(settings: Settings) -> None:
    """Refuse to start with an unsafe subscription: a SettingsError naming each entry and its rule."""
    try:
        warnings = await check_subscriptions(settings.notify.subscription_list(), url_policy(settings))
    except UnsafeSubscription as exc:
        raise SettingsError([(f"NOTIFY_SUBSCRIPTIONS {name}", why) for name, why in exc.problems]) from None
    for warning in warnings:
        log.warning("callback_subscription_unresolved", detail=warning)


def require_safe_subscriptions(settings: Settings) -> None:
    """For the CLI: the same check before the stage starts (exit code 2 and the list of problems)."""
    asyncio.run(check_safe_subscriptions(settings))


class KafkaDeadLetters:
    """Dead letters through the stage's broker; returns only once Kafka acknowledged the record."""

    def __init__(self, broker: KafkaBroker, topic: str) -> None:
        self._broker = broker
        self._topic = topic

    async def dead_letter(self, delivery: Delivery, reason: DeadLetterReason) -> None:
        subscription = delivery.subscription
        error = (f"{subscription.name} ({origin_of(subscription.url)}): {delivery.attempts} attempt(s); "
                 f"last answer: {delivery.last_answer}")
        headers = {"notify-event-id": delivery.event.event_id, "notify-endpoint": origin_of(subscription.url),
                   "notify-subscription": subscription.name}
        await self.publish(delivery.source, reason, error, headers, delivery.event.request_id)

    async def publish(
        self, source: Source, reason: DeadLetterReason, error: str, extra: dict[str, str], request_id: str | None
    ) -> None:
        letter = build_dead_letter(
            Stage.NOTIFY, reason, error, topic=source.topic, partition=source.partition, offset=source.offset,
            key=source.key, value=source.value, headers={**source.headers, **extra}, request_id=request_id,
        )
        body = letter.model_dump_json().encode()
        for attempt in range(1_000_000):
            try:
                await self._broker.publish(
                    body, self._topic, key=source.key, headers={"content-type": "application/json"}
                )
                return
            except KafkaError as exc:
                # Nothing is lost while we wait: the source's offset is not committed until this returns.
                delay = _REPUBLISH_SECONDS[min(attempt, len(_REPUBLISH_SECONDS) - 1)]
                log.warning("dead_letter_publish_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, notify: Notify) -> None:
        self._notify = notify

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._notify.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("notify_partitions_assigned", partitions=len(set(assigned)))


class Notify:
    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        notify = settings.notify
        self.topics = TopicCatalog(settings.kafka)
        self.subscriptions = notify.subscription_list()
        self.hooks = NotifyTelemetry()
        self.hooks.declare(sorted({origin_of(s.url) for s in self.subscriptions}))
        self.broker = new_broker(settings.kafka, telemetry.tracer_provider, Stage.NOTIFY.value, graceful_timeout=5.0)
        self.tracker = OffsetTracker()
        self.poster = CallbackPoster(notify, url_policy(settings))
        self.dead_letters = KafkaDeadLetters(self.broker, self.topics.dead_letters)
        self.dispatcher: Dispatcher | None = None
        self.subscriber = self.broker.subscriber(
            self.topics.send_results, self.topics.status_events, self.topics.inbound_messages,
            batch=True,
            group_id=notify.group_id,
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset=notify.auto_offset_reset,
            isolation_level="read_committed",  # send.results is written in the sender's transactions
            max_records=notify.batch_max_records,
            batch_timeout_ms=200,
            **group_timeouts(notify.session_timeout_seconds),
            listener=_Rebalance(self),
            decoder=_raw,  # the handler reads the records themselves: decoding them here is wasted work
        )
        self.subscriber(self._handle)
        self._ops: OpsServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._commit_lock = asyncio.Lock()
        self._running = False

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Notify:
        await check_safe_subscriptions(self.settings)
        self.dispatcher = Dispatcher(
            self.subscriptions, DeliveryConfig.of(self.settings.notify), self.poster, self.dead_letters,
            self.hooks, self.tracker.finish,
        )
        self._ops = OpsServer(self.settings.notify.host, self.settings.notify.port, self.ready)
        await self._ops.__aenter__()
        self._tasks.append(asyncio.create_task(self._start_broker(), name="notify-broker"))
        return self

    async def _start_broker(self) -> None:
        for delay in (0.5, 1.0, 2.0, 5.0, *([5.0] * 10_000)):
            try:
                await self.broker.start()
                break
            except KafkaError as exc:
                log.warning("notify_kafka_unavailable", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
        self._running = True
        log.info("notify_consuming", subscriptions=len(self.subscriptions), group=self.settings.notify.group_id)
        self._tasks.append(asyncio.create_task(self._commit_loop(), name="notify-commits"))
        self._tasks.append(asyncio.create_task(
            track_lag(subscriber_consumers(self.subscriber), self.settings.notify.group_id), name="notify-lag"))

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._commit()  # what ended is committed; what did not is replayed by the next owner
        await self.broker.stop()
        if self.dispatcher is not None:
            await self.dispatcher.aclose()
        await self.poster.aclose()
        if self._ops is not None:
            await self._ops.__aexit__(None, None, None)

    def ready(self) -> bool:
        return self._running

    @property
    def ops_port(self) -> int | None:
        return self._ops.port if self._ops is not None else None

    # --- consuming ---------------------------------------------------------------------------------

    async def _handle(self, body: Any, msg: KafkaMessage) -> None:
        dispatcher = self.dispatcher
        if dispatcher is None:
            raise RuntimeError("the dispatcher is created before the broker starts")
        for record in msg.raw_message:
            await dispatcher.room()
            source = self.tracker.track(record)
            try:
                event = event_from_record(record.topic, source.value)
                dispatcher.submit(source, event)
            except ValidationError as exc:
                await self._dead_letter_record(source, *_invalid(exc))
            except Exception as exc:  # a bug must not stall the partition's commits behind this record
                log.error("notify_record_failed", topic=source.topic, offset=source.offset, exc_info=exc)
                await self._dead_letter_record(source, DeadLetterReason.UNEXPECTED_ERROR, repr(exc))

    async def _dead_letter_record(self, source: Source, reason: DeadLetterReason, error: str) -> None:
        log.warning("notify_record_dead_lettered", topic=source.topic, partition=source.partition,
                    offset=source.offset, reason=reason.value)
        await self.dead_letters.publish(source, reason, error, {}, None)
        self.hooks.dead_lettered_record(reason)
        self.tracker.finish(source)

    # --- committing --------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.notify.commit_interval_seconds)
            await self._commit()

    async def _commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        consumer = getattr(self.subscriber, "consumer", None)
        if consumer is None:
            return
        async with self._commit_lock:
            due = self.tracker.due() if offsets is None else offsets
            assigned = consumer.assignment()
            due = {tp: offset for tp, offset in due.items() if tp in assigned}
            if not due:
                return
            try:
                await consumer.commit(due)
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("notify_commit_failed_after_rebalance", error=str(exc))
                return
            except KafkaError as exc:
                log.warning("notify_commit_failed", error=str(exc))
                return
            self.tracker.committed(due)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Commit what ended on the partitions leaving; drop the rest (the next owner sends it)."""
        final = self.tracker.revoke(partitions)
        if final:
            await self._commit(final)


async def _raw(msg: Any) -> None:
    return None


def _invalid(exc: ValidationError) -> tuple[DeadLetterReason, str]:
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        return DeadLetterReason.INVALID_JSON, f"not JSON: {exc.errors()[0]['msg']}"
    return DeadLetterReason.SCHEMA_INVALID, describe(field_errors(exc))



async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop`)."""
    telemetry = setup(Stage.NOTIFY, settings)
    stop = stop_on_signals(stop)
    try:
        receiver = None
        if settings.notify.demo_receiver:
            from pipeline.notify.demo import DemoReceiver

            receiver = DemoReceiver(settings.notify)
            await receiver.start()
        try:
            async with Notify(settings, telemetry) as notify:
                log.info("notify_started", ops_port=notify.ops_port, subscriptions=len(notify.subscriptions))
                await stop.wait()
        finally:
            if receiver is not None:
                await receiver.stop()
    finally:
        release_signals()
        log.info("notify_stopped")
