"""The API's Kafka producer: idempotent, `acks=all`, and an answer only once the broker has the record.

    publisher = Publisher(settings, tracer_provider)
    await publisher.start()                      # retries until the broker answers
    durable = await publisher.publish(requests)  # [Delivery.ACKNOWLEDGED, Delivery.FAILED, …]
    await publisher.stop()

FAILED means not written (so the API may say 503): a record is handed to the producer only while
its partition's leader is connected, and on the deadline records still waiting in the producer are
withdrawn (`pipeline.produce_guard`). Only a record already sent to a broker can be PENDING.

Raw aiokafka rather than a FastStream publisher: with the project's middlewares, FastStream published
less than half as many records per second on this machine (docs/api.md has the figures), and the API
is CPU-bound. The produce span and the W3C `traceparent` header are written here instead, named by the project's
conventions (`send <topic>`, as FastStream's spans are renamed) so traces read the same in every stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from enum import StrEnum
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from pipeline.config import Settings
from pipeline.contracts import SendRequest
from pipeline.kafka_client import PRODUCER_BATCH_BYTES
from pipeline.observability import current_traceparent, get_logger
from pipeline.observability.tracing import messaging_attributes
from pipeline.produce_guard import leaders_reachable, request_timeout_ms, withdraw
from pipeline.topics import TopicCatalog, partition_for

log = get_logger(__name__)

JSON = b"application/json"


class Delivery(StrEnum):
    ACKNOWLEDGED = "acknowledged"  # durable: in Kafka on every in-sync replica
    FAILED = "failed"  # not written, and never will be: never handed over, refused, or withdrawn
    PENDING = "pending"  # already sent to a broker, not acknowledged in time: unknown (see `on_late`)


LateOutcome = Callable[[int, bool], None]
"""Told `(index, acknowledged)` for a record whose acknowledgement came after the answer."""


class _Record:
    """A request as a Kafka record: key, JSON value and headers."""

    __slots__ = ("headers", "key", "value")

    def __init__(self, request: SendRequest, traceparent: bytes) -> None:
        self.key = (request.phone_number_id or "").encode()
        self.value = request.model_dump_json(exclude_none=True).encode()
        self.headers = [
            ("traceparent", traceparent),
            ("content-type", JSON),
            ("request-id", request.request_id.encode()),
        ]

    def fields(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "headers": self.headers}


class Unavailable(Exception):
    """Kafka did not acknowledge in time (or is not connected yet); the caller should retry later."""


class Publisher:
    def __init__(self, settings: Settings, tracer_provider: TracerProvider) -> None:
        self._kafka = settings.kafka
        self._timeout = settings.api.publish_timeout_seconds
        self._linger_seconds = settings.api.linger_seconds
        self.topic = TopicCatalog(settings.kafka).send_requests
        self._tracer = tracer_provider.get_tracer("pipeline.api")
        self._producer: AIOKafkaProducer | None = None

    async def start(self, retry_seconds: float = 2.0) -> None:
        """Connect, retrying until the broker answers (the API serves 503s meanwhile)."""
        while True:
            producer = AIOKafkaProducer(
                **self._kafka.client_kwargs(),
                enable_idempotence=True,  # implies acks=all and no duplicates on the producer's retries
                acks="all",
                linger_ms=round(self._linger_seconds * 1000),
                # Well past the deadline: a batch must be withdrawn (503) or sent, never expired by
                # aiokafka (module docstring of produce_guard). A drained batch is retried by the
                # idempotent producer (written once) and its request answered 504 at the deadline.
                request_timeout_ms=request_timeout_ms(self._timeout),
                max_batch_size=PRODUCER_BATCH_BYTES,
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                log.warning("kafka_unreachable", error=type(exc).__name__, retry_in_seconds=retry_seconds)
                await asyncio.sleep(retry_seconds)
                continue
            self._producer = producer
            log.info("kafka_producer_connected", bootstrap_servers=self._kafka.bootstrap_servers)
            return

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()  # flushes what is in flight

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def connected(self) -> bool:
        """True when a broker answers within a second: the readiness check."""
        producer = self._producer
        if producer is None:
            return False
        client = producer.client
        nodes = [broker.nodeId for broker in client.cluster.brokers()]
        try:
            async with asyncio.timeout(1.0):
                for node in nodes:
                    if await client.ready(node):
                        return True
        except TimeoutError:
            return False
        return False

    async def publish(self, requests: Sequence[SendRequest], on_late: LateOutcome | None = None) -> list[Delivery]:
        """Publish to `send.requests` (key = phone_number_id); one Delivery per request.

        PENDING means "not acknowledged in time", not "not written": a record already handed to the
        producer is retried until it lands (idempotent producers never give up on a batch sent to a
        broker), so `on_late(index, acknowledged)` is called for each PENDING record when its fate
        is known. One `send <topic>` span covers the call, child of the current (server) span; every
        record carries its context as `traceparent`, so the sender's spans join the caller's trace.
        """
        producer = self._require()
        attributes: dict[str, Any] = {
            **messaging_attributes(self.topic, operation="send"), "messaging.operation.name": "publish",
        }
        if len(requests) == 1:
            attributes["messaging.message.id"] = requests[0].request_id
            attributes["messaging.kafka.message.key"] = requests[0].phone_number_id or ""
        else:
            attributes["messaging.batch.message_count"] = len(requests)
        with self._tracer.start_as_current_span(
            f"send {self.topic}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            traceparent = (current_traceparent() or "").encode()
            records = [_Record(r, traceparent) for r in requests]
            futures: list[asyncio.Future[RecordMetadata] | None] = [None] * len(records)
            try:
                async with asyncio.timeout(self._timeout):
                    by_partition = await self._place(producer, records)
                    if not await leaders_reachable(producer, self.topic, by_partition):
                        log.warning("kafka_leader_unreachable", topic=self.topic)
                    elif len(records) == 1:
                        [partition] = by_partition
                        futures[0] = await producer.send(self.topic, partition=partition, **records[0].fields())
                    else:
                        await self._send_batches(producer, records, by_partition, futures)
                    # wait(), not gather(): a timeout must not cancel what may still be delivered.
                    if handed := {f for f in futures if f is not None}:
                        await asyncio.wait(handed)
            except TimeoutError:
                withdraw(producer, (f for f in futures if f is not None and not f.done()))
            except KafkaError as exc:  # e.g. the topic's metadata never arrived
                log.warning("kafka_send_failed", error=type(exc).__name__, topic=self.topic)
                withdraw(producer, (f for f in futures if f is not None and not f.done()))
            durable = [
                Delivery.FAILED if f is None else _settled(f, partial(on_late, i) if on_late else None)
                for i, f in enumerate(futures)
            ]
            first = futures[0]
            if any(d is not Delivery.ACKNOWLEDGED for d in durable):
                span.set_status(trace.StatusCode.ERROR, "not acknowledged by Kafka in time")
            elif len(records) == 1 and first is not None:
                span.set_attribute("messaging.destination.partition.id", str(first.result().partition))
                span.set_attribute("messaging.kafka.offset", first.result().offset)
            return durable

    async def _place(self, producer: AIOKafkaProducer, records: list[_Record]) -> dict[int, list[int]]:
        """Record indexes by partition, chosen by aiokafka's own default partitioner (where
        `send(key=...)` would put them), so the leaders can be checked before anything is handed over."""
        partitions = sorted(await producer.partitions_for(self.topic))
        by_partition: dict[int, list[int]] = {}
        for index, record in enumerate(records):
            partition = partitions[partition_for(record.key, len(partitions))]
            by_partition.setdefault(partition, []).append(index)
        return by_partition

    async def _send_batches(
        self,
        producer: AIOKafkaProducer,
        records: list[_Record],
        by_partition: dict[int, list[int]],
        futures: list[asyncio.Future[RecordMetadata] | None],
    ) -> None:
        """Many records as one producer batch per partition: a batch request costs one future and one
        partitioner call per business number instead of per record (half the CPU of `send()` each).
        """
        for partition, indexes in by_partition.items():
            batch, members = producer.create_batch(), list[int]()
            for index in indexes:
                if batch.append(timestamp=None, **records[index].fields()) is None:
                    if members:  # full: ship it and start the next
                        await self._ship(producer, batch, partition, members, futures)
                        batch, members = producer.create_batch(), []
                    if batch.append(timestamp=None, **records[index].fields()) is None:
                        # Larger than a whole batch: the producer sizes a batch for it.
                        futures[index] = await producer.send(self.topic, partition=partition,
                                                             **records[index].fields())
                        continue
                members.append(index)
            if members:
                await self._ship(producer, batch, partition, members, futures)

    async def _ship(
        self,
        producer: AIOKafkaProducer,
        batch: Any,
        partition: int,
        members: list[int],
        futures: list[asyncio.Future[RecordMetadata] | None],
    ) -> None:
        batch.close()  # nothing else may join it (`send()` could otherwise add records to it)
        future = await producer.send_batch(batch, self.topic, partition=partition)
        for index in members:
            futures[index] = future

    async def send(
        self, topic: str, key: bytes, value: bytes, on_late: Callable[[bool], None] | None = None
    ) -> RecordMetadata:
        """One record to another topic (the idempotency records), acknowledged or `Unavailable`.

        After an `Unavailable` timeout the record may still land; `on_late(acknowledged)` says so.
        """
        producer = self._require()
        future = None
        try:
            async with asyncio.timeout(self._timeout):
                partitions = sorted(await producer.partitions_for(topic))
                partition = partitions[partition_for(key, len(partitions))]
                if not await leaders_reachable(producer, topic, [partition]):
                    raise Unavailable("no connection to the partition's leader")
                future = await producer.send(topic, value=value, key=key, partition=partition,
                                             headers=[("content-type", JSON)])
                await asyncio.wait([future])
        except TimeoutError:
            if future is not None:
                withdraw(producer, [future])
        except KafkaError as exc:
            raise Unavailable(f"Kafka refused the record: {type(exc).__name__}") from None
        if future is None or _settled(future, on_late) is not Delivery.ACKNOWLEDGED:
            raise Unavailable("Kafka did not acknowledge in time")
        return future.result()

    async def partitions(self, topic: str) -> set[int]:
        """The topic's partitions (waits for metadata; raises a KafkaError when the topic does not exist)."""
        partitions: set[int] = await self._require().partitions_for(topic)
        return partitions

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise Unavailable("not connected to Kafka yet")
        return self._producer


def _settled(future: asyncio.Future[RecordMetadata], on_late: Callable[[bool], None] | None) -> Delivery:
    """Where the record stands; if still pending, its outcome goes to `on_late` when it comes."""
    if future.done():
        return Delivery.ACKNOWLEDGED if _acknowledged(future) else Delivery.FAILED

    def report(done: asyncio.Future[RecordMetadata]) -> None:
        acknowledged = _acknowledged(done)  # also retrieves the exception, so asyncio does not warn
        if on_late is not None:
            on_late(acknowledged)

    future.add_done_callback(report)
    return Delivery.PENDING


def _acknowledged(future: asyncio.Future[RecordMetadata]) -> bool:
    return not future.cancelled() and future.exception() is None
