"""The projection on FastStream: one batch subscriber over the four topics, acknowledged after commit.

    projector = Projector(backend, sealer, hooks, catalog, dead_letter=publish)
    broker = new_broker(settings, telemetry)
    subscriber = subscribe(broker, projector, settings)
    await broker.start()

Each batch (up to STORE_BATCH_SIZE records, across topics and partitions) becomes one database
transaction; only after it commits does `msg.ack()` commit the consumer's offsets, which for a batch
subscriber are exactly the positions after this batch (the handler runs one batch at a time). A kill
between the two replays the batch, which the upserts make harmless. When the database does not answer,
`msg.nack()` rewinds every partition of the batch to its first record and the same records come back
after a pause: nothing is skipped, and the consumer keeps polling (no eviction from the group).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from pipeline.config import Settings
from pipeline.contracts.dead_letters import build_dead_letter
from pipeline.contracts.vocabulary import DeadLetterReason, Stage
from pipeline.kafka_client import group_timeouts
from pipeline.observability import Telemetry, get_logger
from pipeline.observability import new_broker as observed_broker
from pipeline.store.backend import Backend, BackendUnavailable
from pipeline.store.crypto import Sealer
from pipeline.store.projection import PROJECTED, Record, Reject, project
from pipeline.store.telemetry import StoreTelemetry
from pipeline.topics import TopicCatalog

log = get_logger(__name__)

MAX_PAUSE = 5.0  # between retries while the database is away

DeadLetterSink = Callable[[Reject, bytes | None, dict[str, str]], Awaitable[None]]


class Projector:
    """The batch handler: records → changes → one transaction → ack."""

    def __init__(self, backend: Backend, sealer: Sealer, hooks: StoreTelemetry, catalog: TopicCatalog,
                 dead_letter: DeadLetterSink) -> None:
        self.backend = backend
        self.sealer = sealer
        self.hooks = hooks
        self.dead_letter = dead_letter
        self.topics = {catalog.name(t): t for t in PROJECTED}
        self.names = {t: catalog.name(t) for t in PROJECTED}
        self.database_error: str | None = None  # why the last write failed, until one succeeds
        self.newest_ms: dict[str, int] = {}  # per topic: Kafka time of the newest record committed
        self.batches = 0
        self._failures = 0

    async def handle(self, msg: KafkaMessage) -> None:
        raw: tuple[Any, ...] = msg.raw_message
        started = time.perf_counter()
        records = [Record(self.topics[r.topic], r.value, r.partition, r.offset, r.timestamp) for r in raw]
        try:
            written, rejects = await self._write(records)
            if rejects:
                sources = {(r.topic, r.partition, r.offset): r for r in raw}
                for reject in rejects:
                    record = reject.record
                    source = sources[(self.names[record.topic], record.partition, record.offset)]
                    headers = {k: v.decode("utf-8", "replace") for k, v in (source.headers or ())}
                    await self.dead_letter(reject, source.key, headers)
                    self.hooks.dead_lettered(reject.reason, self.names[record.topic], record.partition, record.offset)
            await msg.ack()
        except BackendUnavailable as exc:
            await self._retry_later(msg, exc)
            return
        except Exception as exc:  # Kafka refused a dead letter, or a bug: never skip the batch
            log.error("batch_failed", error=str(exc), exc_info=exc)
            await self._retry_later(msg, None)
            return
        self.database_error = None
        self._failures = 0
        newest: dict[str, int] = {}
        for r in raw:
            newest[r.topic] = max(newest.get(r.topic, 0), r.timestamp)
        self.newest_ms.update(newest)
        self.batches += 1
        self.hooks.batch_committed(time.perf_counter() - started, written, newest)

    async def _write(self, records: list[Record]) -> tuple[dict[str, int], list[Reject]]:
        changes, rejects = project(records)
        try:
            return await self.backend.apply(self.sealer.seal_changes(changes)), rejects
        except BackendUnavailable:
            raise
        except Exception as exc:
            # The database refused a value (PostgreSQL refuses a NUL in text, say): find the record,
            # one transaction each, so that it alone is dead-lettered and the others are stored.
            log.warning("batch_refused_by_database", error=type(exc).__name__, records=len(records))
        written: dict[str, int] = {}
        rejects = []
        for record in records:
            changes, refused = project([record])
            rejects.extend(refused)
            try:
                for table, rows in (await self.backend.apply(self.sealer.seal_changes(changes))).items():
                    written[table] = written.get(table, 0) + rows
            except BackendUnavailable:
                raise
            except Exception as exc:
                rejects.append(Reject(record, DeadLetterReason.UNEXPECTED_ERROR, f"database refused it: {exc}"[:4096]))
        return written, rejects

    async def _retry_later(self, msg: Any, exc: BackendUnavailable | None) -> None:
        self._failures += 1
        if exc is not None:
            self.database_error = str(exc)
            self.hooks.db_error("write", exc)
        await msg.nack()  # every partition of the batch back to its first record
        await asyncio.sleep(min(MAX_PAUSE, 0.25 * 2 ** self._failures))


def new_broker(settings: Settings, telemetry: Telemetry) -> KafkaBroker:
    # graceful_timeout: a batch in hand finishes its transaction and its ack
    return observed_broker(settings.kafka, telemetry.tracer_provider, Stage.STORE.value, graceful_timeout=15.0)


def subscribe(broker: KafkaBroker, projector: Projector, settings: Settings) -> Any:
    catalog = TopicCatalog(settings.kafka)
    store = settings.store
    subscriber = broker.subscriber(
        *(catalog.name(t) for t in PROJECTED),
        group_id=store.group_id,
        batch=True,
        max_records=store.batch_size,
        batch_timeout_ms=200,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        fetch_min_bytes=64 * 1024,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **group_timeouts(store.session_timeout_seconds),
        decoder=_undecoded,
        title="store",
        description="projects requests, results, statuses and inbound messages into the database",
    )
    subscriber(projector.handle)
    return subscriber


async def _undecoded(msg: Any) -> None:
    """The projector parses `raw_message` itself; FastStream's decoder would parse every JSON body first."""
    return None


def dead_letter_sink(broker: KafkaBroker, catalog: TopicCatalog) -> DeadLetterSink:
    async def publish(reject: Reject, key: bytes | None, headers: dict[str, str]) -> None:
        record = reject.record
        # Bounded like every stage's (a poison record may be of any size): an oversized letter would be
        # refused by the producer, and the batch behind it retried forever.
        letter = build_dead_letter(
            Stage.STORE, reject.reason, reject.error, topic=catalog.name(record.topic), partition=record.partition,
            offset=record.offset, key=key, value=record.value, headers=headers,
            request_id=headers.get("request-id"),
        )
        await broker.publish(letter.model_dump_json().encode(), topic=catalog.dead_letters, key=key,
                             headers={"content-type": "application/json"})

    return publish
