"""Consumer lag per topic and group, into `delivery_consumer_lag_messages`.

    # a raw aiokafka consumer (the sender)
    task = asyncio.create_task(track_lag(consumer, settings.sender.group_id))
    # a FastStream subscriber (the ingest); its consumers exist only once the broker runs
    task = asyncio.create_task(track_lag(subscriber_consumers(subscriber), subscriber.group_id))

Lag of a partition = log end offset minus the group's committed offset (the consumer's position before
the group's first commit). Each process reports the partitions assigned to it, summed per topic, so
`sum by (topic, group)` over instances is the group's lag and the per-instance series show which
replica falls behind. Run one tracker per group per process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.observability.logs import get_logger
from pipeline.observability.metrics import CONSUMER_LAG

ConsumerSource: TypeAlias = AIOKafkaConsumer | Callable[[], Iterable[AIOKafkaConsumer]]

log = get_logger(__name__)


def subscriber_consumers(subscriber: Any) -> Callable[[], list[AIOKafkaConsumer]]:
    """The aiokafka consumers behind a started FastStream Kafka subscriber (none before start).

    A subscriber with `max_workers` and a committing ack policy runs several consumers in one group
    (`consumer_subgroup`); otherwise there is one (`consumer`).
    """

    def consumers() -> list[AIOKafkaConsumer]:
        subgroup = getattr(subscriber, "consumer_subgroup", None)
        if subgroup:
            return list(subgroup)
        consumer = getattr(subscriber, "consumer", None)
        return [consumer] if consumer is not None else []

    return consumers


async def measure_lag(consumers: ConsumerSource) -> dict[str, int]:
    """Messages behind the end of each topic, over the partitions assigned to `consumers`."""
    lag: dict[str, int] = {}
    for consumer in _resolve(consumers):
        assigned = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        if not assigned:
            continue
        ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
        for tp in assigned:
            done = await consumer.committed(tp)
            if done is None:
                done = await consumer.position(tp)
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, ends[tp] - done)
    return lag


class LagReporter:
    """Sets the gauge from one measurement; topics no longer assigned here lose their series."""

    def __init__(self, consumers: ConsumerSource, group: str) -> None:
        self.consumers = consumers
        self.group = group
        self._reported: set[str] = set()

    async def report(self) -> dict[str, int]:
        lag = await measure_lag(self.consumers)
        for topic, value in lag.items():
            CONSUMER_LAG.labels(topic=topic, group=self.group).set(value)
        self._remove(self._reported - lag.keys())
        self._reported = set(lag)
        return lag

    def clear(self) -> None:
        self._remove(self._reported)
        self._reported = set()

    def _remove(self, topics: Iterable[str]) -> None:
        for topic in topics:
            with contextlib.suppress(KeyError):  # already gone
                CONSUMER_LAG.remove(topic, self.group)


async def track_lag(consumers: ConsumerSource, group: str, interval: float = 5.0) -> None:
    """Report lag every `interval` seconds until cancelled; the series are removed on the way out."""
    reporter = LagReporter(consumers, group)
    try:
        while True:
            try:
                # A broker that does not answer must not stall the loop for longer than a round.
                async with asyncio.timeout(max(interval, 5.0)):
                    await reporter.report()
            except (KafkaError, AssertionError, RuntimeError, TimeoutError) as exc:
                # Rebalances, a consumer being stopped or a broker hiccup: the next round retries.
                # (aiokafka raises IllegalStateError, a KafkaError, for partitions revoked mid-way.)
                log.warning("consumer_lag_unavailable", group=group, error=exc)
            await asyncio.sleep(interval)
    finally:
        reporter.clear()


def _resolve(consumers: ConsumerSource) -> list[AIOKafkaConsumer]:
    if isinstance(consumers, AIOKafkaConsumer):
        return [consumers]
    return list(consumers())
