"""How done offsets become committed: with the outcomes in Kafka transactions, or on their own.

    committer = TransactionalCommitter(producer_for, group_id, topic)   # one producer per input partition
    await committer.assign([0, 3])        # on assignment, BEFORE reading the committed offsets: fences
    sink = committer.sink(tracer)         # publishes inside the open transaction of the record's partition
    committed = await committer.commit(engine.owned.offsets_to_commit)   # {partition: (offset, metadata)}
    await committer.release([0])          # after the revoked partitions' final commit

**Transactional (the default).** Outcomes (`send.results`, `dead-letters`, re-routed requests) are
written inside a transaction that also carries the consumer group's offsets (with the done-offset
metadata), committed every `commit_interval_seconds`. A crash before the commit aborts both: the
requests are processed again and their new outcomes are the only ones a `read_committed` reader ever
sees. So every request has exactly one outcome on Kafka, and only the Graph API calls themselves
(which Kafka cannot roll back) may repeat, bounded by what was dispatched since the last commit.

**Fencing: one transactional producer per input partition** (`<group>-<topic>-<partition>`, as Kafka
Streams did before KIP-447). The outcomes of partition p go out in p's producer's transaction, with p's
offsets. Whoever is assigned p next starts a producer with the same id, and its `init_transactions`
(in `assign`, before the committed offsets are read) aborts the open transaction of p's previous owner
and bumps the epoch: a replica that lost p while it was paused or cut off (a zombie) can never commit,
or even add to, a transaction for p again (`ProducerFenced`). aiokafka's `send_offsets_to_transaction`
takes a group id, not the group metadata of KIP-447, so the broker cannot fence by generation; the
per-partition id is what does. Passing one producer instead of a factory puts every partition in that
producer's one transaction, without that fencing (the gate's unit tests use it).

The gate matters: while a commit runs, new publishes wait, and the commit waits for publishes in
progress, so that no outcome lands in a transaction whose offsets do not cover it. A failed or
fenced transaction is fatal (the process exits with an error and restarts from the last commit): the
engine's "done" marks would otherwise claim outcomes that were rolled back.

**Plain** (`SENDER_EXACTLY_ONCE_OUTCOMES=false`, for brokers without transactions): outcomes are
published with an idempotent producer and offsets committed by the consumer afterwards; a crash
can then repeat an outcome record as well as the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from opentelemetry.context import Context
from opentelemetry.trace import Tracer

from pipeline.observability import get_logger
from pipeline.sender.outcomes import KafkaSink

log = get_logger(__name__)

Offsets = dict[int, tuple[int, str]]
# partition -> a transactional producer (not started) whose id belongs to that input partition
ProducerFactory = Callable[[int], AIOKafkaProducer]
_SHARED = -1  # the partition key of the one shared producer


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    """The id of input partition `partition`'s producer: the same in every replica, so owners fence owners."""
    return f"{group_id}-{topic}-{partition}"


class Committer(Protocol):
    async def assign(self, partitions: Collection[int]) -> None:
        """Partitions just assigned, before their committed offsets are read (fences their last owner)."""
        ...

    async def commit(self, offsets: Callable[[], Offsets], *, final: bool = False) -> Offsets:
        """Commit what `offsets()` says (asked at the last moment); return what was committed."""
        ...

    async def release(self, partitions: Collection[int]) -> None:
        """Partitions revoked, after their final commit."""
        ...


class TransactionalCommitter:
    def __init__(self, producer: AIOKafkaProducer | ProducerFactory, group_id: str, topic: str) -> None:
        self._factory: ProducerFactory | None = producer if callable(producer) else None
        self._producers: dict[int, AIOKafkaProducer] = {} if callable(producer) else {_SHARED: producer}
        self._group_id = group_id
        self._topic = topic
        self._open = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._publishing = 0
        self._dirty: set[int] = set()  # producers that published in their open transaction
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self._factory is None:
            await self._producers[_SHARED].begin_transaction()
        self._open.set()

    async def assign(self, partitions: Collection[int]) -> None:
        if self._factory is None:
            return
        factory = self._factory
        async with self._lock:  # not while a commit iterates over the producers

            async def one(partition: int) -> tuple[int, AIOKafkaProducer]:
                producer = factory(partition)
                try:
                    await producer.start()  # init_transactions: the previous owner's transaction ends here
                    await producer.begin_transaction()
                except BaseException:
                    await producer.stop()
                    raise
                return partition, producer

            started = await asyncio.gather(*(one(p) for p in partitions if p not in self._producers),
                                           return_exceptions=True)
            failure = None
            for item in started:
                if isinstance(item, BaseException):
                    failure = failure or item
                else:
                    self._producers[item[0]] = item[1]
            if failure is not None:
                raise failure

    async def release(self, partitions: Collection[int]) -> None:
        if self._factory is None:
            return
        async with self._lock:
            gone = [self._producers.pop(p) for p in partitions if p in self._producers]
            for p in partitions:
                self._dirty.discard(p)
            await asyncio.gather(*(producer.stop() for producer in gone), return_exceptions=True)

    async def close(self) -> None:
        """Stop every producer this committer started (the shared one belongs to the caller)."""
        if self._factory is not None:
            await self.release(list(self._producers))

    def sink(self, tracer: Tracer | None = None) -> _TransactionalSink:
        return _TransactionalSink(self, tracer)

    def producer_of(self, partition: int | None) -> AIOKafkaProducer:
        key = _SHARED if self._factory is None else partition
        producer = self._producers.get(key) if key is not None else None
        if producer is None:
            # The engine publishes only for partitions it tracks, and it tracks them only after `assign`.
            raise IllegalStateError(f"no transactional producer for partition {partition}")
        return producer

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
            if self._factory is None:
                await self._end(_SHARED, committed, final)
            else:
                missing = set(committed) - self._producers.keys()
                if missing:
                    raise IllegalStateError(f"offsets to commit for partitions without a producer: {sorted(missing)}")
                ends = await asyncio.gather(
                    *(self._end(p, {p: committed[p]} if p in committed else {}, final) for p in self._producers),
                    return_exceptions=True,
                )
                failure = next((e for e in ends if isinstance(e, BaseException)), None)
                if failure is not None:
                    raise failure
            log.debug("transaction_committed", offsets={p: o for p, (o, _) in committed.items()},
                      drain_ms=round((drained - started) * 1000, 1),
                      commit_ms=round((time.monotonic() - drained) * 1000, 1))
            return committed
        finally:
            if not final:
                self._open.set()

    async def _end(self, key: int, committed: Offsets, final: bool) -> None:
        """Commit `key`'s open transaction (with `committed`'s offsets), then open the next one."""
        producer = self._producers[key]
        if committed:
            request = {TopicPartition(self._topic, p): entry for p, entry in committed.items()}
            await producer.send_offsets_to_transaction(request, self._group_id)
        if committed or key in self._dirty or final:
            await producer.commit_transaction()
            self._dirty.discard(key)
            if not final:
                await producer.begin_transaction()

    async def _enter(self, partition: int | None) -> AIOKafkaProducer:
        while not self._open.is_set():
            await self._open.wait()
        producer = self.producer_of(partition)
        self._publishing += 1
        self._dirty.add(_SHARED if self._factory is None else partition)  # type: ignore[arg-type]
        return producer

    def _leave(self) -> None:
        self._publishing -= 1
        if not self._publishing:
            self._idle.set()


class _TransactionalSink(KafkaSink):
    """Publishes through the producer of the record's input partition, inside its open transaction."""

    def __init__(self, committer: TransactionalCommitter, tracer: Tracer | None) -> None:
        super().__init__(None, tracer)
        self._committer = committer

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]],
        *, context: Context | None = None, source_partition: int | None = None,
    ) -> None:
        producer = await self._committer._enter(source_partition)
        try:
            await self._send(producer, topic, key, value, headers, context)
        finally:
            self._committer._leave()


class ConsumerCommitter:
    """Offsets committed by the consumer, after the outcomes were acknowledged (at-least-once)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic

    async def assign(self, partitions: Collection[int]) -> None:
        pass

    async def release(self, partitions: Collection[int]) -> None:
        pass

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
