"""How done offsets become committed: with the outcomes in one Kafka transaction, or on their own.

    committer = TransactionalCommitter(producer, group_id, topic)   # exactly one visible outcome per request
    sink = committer.sink(tracer)                            # publishes inside the open transaction
    committed = await committer.commit(engine.offsets_to_commit)   # {partition: (offset, metadata)}

**Transactional (the default).** Outcomes (`send.results`, `dead-letters`, re-routed requests) are
written inside a transaction that also carries the consumer group's offsets (with the done-offset
metadata), committed every `commit_interval_seconds`. A crash before the commit aborts both: the
requests are processed again and their new outcomes are the only ones a `read_committed` reader ever
sees. So every request has exactly one outcome on Kafka, and only the Graph API calls themselves
(which Kafka cannot roll back) may repeat, bounded by what was dispatched since the last commit.

The gate matters: while a commit runs, new publishes wait, and the commit waits for publishes in
progress, so that no outcome lands in a transaction whose offsets do not cover it. A failed
transaction is fatal (the process exits with an error and restarts from the last commit): the
engine's "done" marks would otherwise claim outcomes that were rolled back.

**Plain** (`SENDER_EXACTLY_ONCE_OUTCOMES=false`, for brokers without transactions): outcomes are
published with an idempotent producer and offsets committed by the consumer afterwards; a crash
can then repeat an outcome record as well as the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from opentelemetry.context import Context
from opentelemetry.trace import Tracer

from pipeline.observability import get_logger
from pipeline.sender.outcomes import KafkaSink

log = get_logger(__name__)

Offsets = dict[int, tuple[int, str]]


class Committer(Protocol):
    async def commit(self, offsets: Callable[[], Offsets], *, final: bool = False) -> Offsets:
        """Commit what `offsets()` says (asked at the last moment); return what was committed."""
        ...


class TransactionalCommitter:
    def __init__(self, producer: AIOKafkaProducer, group_id: str, topic: str) -> None:
        self._producer = producer
        self._group_id = group_id
        self._topic = topic
        self._open = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._publishing = 0
        self._dirty = False  # something was published in the open transaction
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._producer.begin_transaction()
        self._open.set()

    def sink(self, tracer: Tracer | None = None) -> _TransactionalSink:
        return _TransactionalSink(self, self._producer, tracer)

    async def commit(self, offsets: Callable[[], Offsets], *, final: bool = False) -> Offsets:
        # The periodic commit and a rebalance's final commit can meet: one transaction at a time.
        async with self._lock:
            return await self._commit(offsets, final)

    async def _commit(self, offsets: Callable[[], Offsets], final: bool) -> Offsets:
        started = time.monotonic()
        self._open.clear()
        try:
            while self._publishing:
                self._idle.clear()
                await self._idle.wait()
            drained = time.monotonic()
            committed = offsets()
            if committed:
                request = {TopicPartition(self._topic, p): entry for p, entry in committed.items()}
                await self._producer.send_offsets_to_transaction(request, self._group_id)
            if committed or self._dirty or final:
                await self._producer.commit_transaction()
                self._dirty = False
                if not final:
                    await self._producer.begin_transaction()
            log.debug("transaction_committed", offsets={p: o for p, (o, _) in committed.items()},
                      drain_ms=round((drained - started) * 1000, 1),
                      commit_ms=round((time.monotonic() - drained) * 1000, 1))
            return committed
        finally:
            if not final:
                self._open.set()

    async def _enter(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
        self._publishing += 1
        self._dirty = True

    def _leave(self) -> None:
        self._publishing -= 1
        if not self._publishing:
            self._idle.set()


class _TransactionalSink(KafkaSink):
    def __init__(self, committer: TransactionalCommitter, producer: AIOKafkaProducer, tracer: Tracer | None) -> None:
        super().__init__(producer, tracer)
        self._committer = committer

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]],
        *, context: Context | None = None,
    ) -> None:
        await self._committer._enter()
        try:
            await super().publish(topic, key, value, headers, context=context)
        finally:
            self._committer._leave()


class ConsumerCommitter:
    """Offsets committed by the consumer, after the outcomes were acknowledged (at-least-once)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic

    async def commit(self, offsets: Callable[[], Offsets], *, final: bool = False) -> Offsets:
        committed = offsets()
        if not committed:
            return {}
        request = {TopicPartition(self._topic, p): entry for p, entry in committed.items()}
        try:
            await self._consumer.commit(request)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group is rebalancing: the partitions may belong to someone else now. What was done
            # and not committed is redone by the next owner (bounded by one commit interval).
            log.warning("commit_skipped", error=str(exc), partitions=sorted(committed))
            return {}
        except KafkaError as exc:
            log.error("commit_failed", error=str(exc), partitions=sorted(committed))
            return {}
        return committed
