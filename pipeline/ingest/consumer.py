"""At-least-once batches on FastStream, shared by the ingest's consumers: process, await outputs, commit.

    broker = new_broker(settings.kafka, telemetry.tracer_provider, "ingest")   # pipeline.observability
    batches = BatchHandler(processor, commit_interval=0.5)
    subscribe(broker, batches, topic="status.updates", group="delivery-ingest-dedupe", settings=settings)
    await broker.start(); commits = asyncio.create_task(batches.commit_while_idle())
    ...
    await batches.close(); await broker.stop()               # the last acknowledged offsets committed

Each subscriber is a FastStream batch subscriber with `AckPolicy.MANUAL`: FastStream fetches, runs the
broker's middlewares (trace context, `faststream_*` metrics) and calls `BatchHandler.handle`, which
owns the acknowledgement. A batch's input offsets become committable only after every record it
produced is acknowledged (acks=all), so a crash replays work rather than losing it; each processor
makes the replay harmless. Offsets are committed explicitly per partition (`msg.ack()` would commit
whatever the consumer fetched), at most every `commit_interval` seconds and always before partitions
are given up: under a steady trickle of webhooks, a commit round trip per small batch was most of
the work. The handler's lock is held while a batch runs and while the rebalance listener commits and
hands partitions over, so partitions change owner only between batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from pipeline.config import Settings
from pipeline.kafka_client import PRODUCER_BATCH_BYTES, group_timeouts, seek_to_first
from pipeline.observability import get_logger
from pipeline.topics import partition_for

log = get_logger(__name__)

_RETRY_DELAY = 1.0  # after a failed batch: Kafka is likely struggling, do not spin


class Processor(Protocol):
    async def assigned(self, partitions: set[TopicPartition]) -> None: ...

    async def revoked(self, partitions: set[TopicPartition]) -> None: ...

    async def process(self, tp: TopicPartition, records: list[Any]) -> None:
        """Handle records of one partition, in order; queue outputs without awaiting their acks."""

    async def flush(self) -> None:
        """Wait until every output queued since the last flush is acknowledged (raise if one failed)."""


def subscribe(
    broker: KafkaBroker,
    handler: BatchHandler,
    topic: str,
    group: str,
    settings: Settings,
    *,
    description: str = "",
    max_records: int | None = None,
) -> Any:
    """Declare `handler`'s batch subscriber on `broker` (it consumes once the broker starts)."""
    ingest = settings.ingest
    subscriber = broker.subscriber(
        topic,
        group_id=group,
        batch=True,
        max_records=max_records or ingest.batch_max_records,
        batch_timeout_ms=200,
        ack_policy=AckPolicy.MANUAL,
        listener=_Rebalance(handler),
        auto_offset_reset="earliest",
        # Let the broker gather up to 64 KiB for at most 50 ms: bigger batches under a steady stream
        # (per-batch costs dominate small ones), at most 50 ms more latency when traffic is thin.
        fetch_min_bytes=64 * 1024,
        fetch_max_wait_ms=50,
        **group_timeouts(ingest.session_timeout_seconds),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        decoder=_undecoded,
        title=f"{topic}:{group}",
        description=description,
    )
    subscriber(handler.handle)
    handler.subscriber = subscriber
    return subscriber


async def _undecoded(msg: Any) -> None:
    """The processors read `raw_message` themselves; FastStream's decoder would parse every JSON body."""
    return None


def new_producer(settings: Settings, linger_seconds: float) -> AIOKafkaProducer:
    """Idempotent (hence acks=all): a retried batch is written once, in order per partition."""
    return AIOKafkaProducer(
        **settings.kafka.client_kwargs(),
        enable_idempotence=True,
        acks="all",
        linger_ms=round(linger_seconds * 1000),
        max_batch_size=PRODUCER_BATCH_BYTES,
        max_request_size=8 * 1024 * 1024,  # a dead letter carries a whole webhook (up to 3 MB, base64)
    )


class BatchHandler:
    """The acknowledgement discipline of one batch subscriber; `handle` is its FastStream handler."""

    def __init__(self, processor: Processor, commit_interval: float = 0.5) -> None:
        self.processor = processor
        self.commit_interval = commit_interval
        self.subscriber: Any = None  # set by `subscribe`
        self.crashed = asyncio.Event()  # set when a BaseException (a simulated kill) went through
        self._done: dict[TopicPartition, int] = {}  # next offsets whose batches are acknowledged
        self._committed_at = time.monotonic()
        self._closing = False
        self._lock = asyncio.Lock()

    @property
    def consumer(self) -> AIOKafkaConsumer | None:
        """The subscriber's aiokafka consumer while the broker runs."""
        return getattr(self.subscriber, "consumer", None)

    def ready(self) -> bool:
        consumer = self.consumer
        return consumer is not None and bool(consumer.assignment())

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of `tp` (the processors restore state up to it)."""
        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("the subscriber is not running")
        offset: int | None = await consumer.committed(tp)
        return offset

    async def handle(self, msg: KafkaMessage) -> None:
        """FastStream's handler: `msg.raw_message` is the batch, as aiokafka records, in fetch order."""
        records: tuple[Any, ...] = msg.raw_message
        consumer: AIOKafkaConsumer = msg.consumer
        async with self._lock:
            if self._closing or self.crashed.is_set():
                return  # not processed, not committed: the next owner replays it
            assigned = consumer.assignment()
            offsets: dict[TopicPartition, int] = {}
            batches = _by_partition(records)
            try:
                for tp, batch in batches.items():
                    if tp not in assigned:  # fetched before a rebalance took it away
                        continue
                    await self.processor.process(tp, batch)
                    offsets[tp] = batch[-1].offset + 1
                await self.processor.flush()
            except Exception as exc:
                await self._replay(consumer, set(batches) & assigned, exc)
                return
            except BaseException:
                self._done.clear()  # like a kill: what was not committed stays uncommitted
                self.crashed.set()
                raise
            self._done.update(offsets)
            if time.monotonic() - self._committed_at >= self.commit_interval:
                await self._commit(consumer)

    async def commit_while_idle(self) -> None:
        """Run beside the broker: acknowledged offsets do not wait for the next batch to be committed."""
        while not self._closing:
            await asyncio.sleep(self.commit_interval)
            consumer = self.consumer
            if self._done and consumer is not None and not self._lock.locked():
                async with self._lock:
                    if not self._closing:
                        await self._commit(consumer)

    async def close(self) -> None:
        """Commit what is acknowledged and take no more batches; then stop the broker."""
        async with self._lock:
            self._closing = True
            consumer = self.consumer
            if consumer is not None and not self.crashed.is_set():
                await self._commit(consumer)

    async def _replay(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition], exc: Exception) -> None:
        """An output was not acknowledged (or a bug hit): forget these partitions and fetch them again.

        Forgetting matters: the processor's in-memory view may be ahead of what reached Kafka, so it
        is rebuilt from Kafka as on a new assignment, then the batch is processed again.
        """
        log.error("batch_failed", error=str(exc), exc_info=exc)
        await self.processor.revoked(partitions)
        await self.processor.assigned(partitions)
        for tp in partitions:
            # Until the seek is done FastStream must not fetch on past the failed batch: a later
            # batch's commit would skip it. So Kafka errors here are waited out, not raised.
            while not self._closing and tp in consumer.assignment():
                try:
                    committed = await consumer.committed(tp)
                    if committed is None:
                        await seek_to_first(consumer, [tp])
                    else:
                        consumer.seek(tp, committed)
                    break
                except KafkaError as error:
                    log.warning("replay_seek_failed", error=str(error))
                    await asyncio.sleep(_RETRY_DELAY)
        await asyncio.sleep(_RETRY_DELAY)

    async def _commit(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the acknowledged offsets (of `partitions`, or all) still assigned here."""
        self._committed_at = time.monotonic()
        assigned = consumer.assignment()
        targets = [tp for tp in self._done if partitions is None or tp in partitions]
        taken = {tp: self._done.pop(tp) for tp in targets}
        offsets = {tp: offset for tp, offset in taken.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on: the new owner replays from the last commit, and the processors
            # make that replay produce nothing twice.
            log.warning("commit_failed_after_rebalance", error=str(exc))
        except KafkaError as exc:
            log.warning("commit_failed", error=str(exc))

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            consumer = self.consumer
            if consumer is not None and not self.crashed.is_set():
                await self._commit(consumer, partitions)
            await self.processor.revoked(partitions)

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            await self.processor.assigned(partitions)


def _by_partition(records: Iterable[Any]) -> dict[TopicPartition, list[Any]]:
    """FastStream hands a batch over flattened; the processors take one partition at a time, in order."""
    batches: dict[TopicPartition, list[Any]] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        batch = batches.get(tp)
        if batch is None:
            batches[tp] = [record]
        else:
            batch.append(record)
    return batches


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, handler: BatchHandler) -> None:
        self._handler = handler

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._handler.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._handler.on_assigned(set(assigned))


class Outbox:
    """The records a batch produced: `send` queues one, `flush` hands them to Kafka and waits for the acks.

        await outbox.send(topic, value, key=b"wamid…", headers=[("traceparent", b"00-…")])
        await outbox.flush()      # raises the first failure, after waiting for all of them

    Records are gathered per (topic, partition) into aiokafka batch builders and shipped as whole
    batches: measured at about a third of the CPU of one `producer.send` per record (and of one
    FastStream publish per record, which is why the handlers do not publish through the broker).
    Records without a partition get the Java-compatible murmur2 partition of their key.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._builders: dict[tuple[str, int], Any] = {}
        self._pending: list[asyncio.Future[Any]] = []
        self._counts: list[int] = []  # records in each pending batch
        self._partitions: dict[str, int] = {}
        # (topic, partition) → the offset after the last record the latest `flush` wrote there
        self.written: dict[tuple[str, int], int] = {}

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if partition is None:
            partition = await self._partition_of(topic, key)
        slot = (topic, partition)
        builder = self._builders.get(slot)
        if builder is None:
            builder = self._builders[slot] = self.producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
            await self._ship(slot)  # full: off it goes, and a new one takes the record
            builder = self._builders[slot] = self.producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                raise ValueError(f"a record for {topic} is larger than the producer's max_batch_size")

    async def flush(self) -> None:
        for slot in list(self._builders):
            await self._ship(slot)
        pending, self._pending = self._pending, []
        counts, self._counts = self._counts, []
        self.written = {}
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for metadata, count in zip(results, counts, strict=True):  # all RecordMetadata by now
            assert not isinstance(metadata, BaseException)
            slot = (metadata.topic, metadata.partition)
            self.written[slot] = max(self.written.get(slot, 0), metadata.offset + count)

    async def _ship(self, slot: tuple[str, int]) -> None:
        builder = self._builders.pop(slot)
        self._counts.append(builder.record_count())
        self._pending.append(await self.producer.send_batch(builder, slot[0], partition=slot[1]))

    async def _partition_of(self, topic: str, key: bytes | None) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = len(await self.producer.partitions_for(topic))
        return partition_for(key, count)
