"""`status.updates` → `status.events` (deduplicated, forward-only) and `status.state` (compacted).

    deduper = Deduper(Outbox(producer), topics, tracer, group, restorer, committed=batches.committed,
                      retention_ms=8 * 86_400_000)
    batches = BatchHandler(deduper)          # its `committed` asks the subscriber's consumer (see `consumer`)

The owner of a `status.updates` partition owns the state of every wamid in it: restored from Kafka on
its first record after an assignment (see `restore`), kept in memory, written back to `status.state`
after every change, and written to the same partition number as the input (co-partitioning). Events
carry the headers `status` and `source-offset` that a later restore reads back.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition
from opentelemetry.trace import Span, SpanKind, Tracer
from pydantic import TypeAdapter, ValidationError

from pipeline.contracts import DeadLetterReason, DeliveryStatus, ErrorClass, Stage, StatusEvent, describe, field_errors
from pipeline.contracts.meta_errors import KNOWN_ERROR_CODES
from pipeline.ingest.bounds import phone_number_label
from pipeline.ingest.consumer import Outbox
from pipeline.ingest.records import dead_letter, header, outgoing_headers
from pipeline.ingest.restore import SOURCE_OFFSET, STATUS, PartitionState, Restorer
from pipeline.ingest.state import Decision, MessageState, Outcome
from pipeline.observability import get_logger
from pipeline.observability.context import context_from_traceparent, exemplar_of, link_to, traceparent_header
from pipeline.observability.metrics import (
    DEAD_LETTERS,
    FAILURES,
    STATUS_DUPLICATES,
    STATUS_EVENTS,
    STATUS_OUT_OF_ORDER,
    TRANSITION,
    error_code_label,
)
from pipeline.observability.tracing import messaging_attributes
from pipeline.topics import TopicCatalog

log = get_logger(__name__)

_STATUS_JSON = TypeAdapter(StatusEvent)
_YIELD_EVERY = 16  # records between yields to the event loop (the webhook receiver shares it)
_SWEEP_EVERY_MS = 10 * 60 * 1000

Committed = Callable[[TopicPartition], Awaitable[int | None]]


class Deduper:
    def __init__(
        self,
        outbox: Outbox,
        topics: TopicCatalog,
        tracer: Tracer,
        group: str,
        restorer: Restorer,
        committed: Committed,
        retention_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.topics = topics
        self.tracer = tracer
        self.group = group
        self.restorer = restorer
        self.committed = committed
        self.retention_ms = retention_ms
        self.clock = clock
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self._swept_ms: dict[TopicPartition, int] = {}

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        return None  # restored lazily, on the partition's first record (a failure then retries the batch)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            part = self.partitions.pop(tp, None)
            if part is not None:
                part.close()  # this batch's pending changes die with it; the file stays for next time
            self._swept_ms.pop(tp, None)

    async def flush(self) -> None:
        """Outputs acknowledged first, then the states written to the local store with the changelog
        offset they reach: the store never holds what the changelog lacks, nor a checkpoint ahead of it."""
        await self.outbox.flush()
        for tp, part in self.partitions.items():
            if part.pending:
                part.persist(self.outbox.written.get((self.topics.status_state, tp.partition)))

    async def process(self, tp: TopicPartition, records: list[Any]) -> None:
        part = self.partitions.get(tp)
        if part is None:
            part = await self._restore(tp)
        now_ms = int(self.clock() * 1000)
        changed: set[str] = set()
        for i, record in enumerate(records):
            await self._one(tp, part, record, now_ms, changed)
            if part.emitted and record.offset >= part.emitted_until:
                part.emitted.clear()  # past everything written before the crash
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
        # One state record per message per batch, however many of its updates the batch held.
        for wamid in changed:
            value = part.value(wamid)
            await self.outbox.send(self.topics.status_state, value, key=wamid.encode(), partition=tp.partition)
        if now_ms - self._swept_ms.get(tp, now_ms) >= _SWEEP_EVERY_MS:
            await self._sweep(tp, part, now_ms)
        self._swept_ms.setdefault(tp, now_ms)

    async def _restore(self, tp: TopicPartition) -> PartitionState:
        started = time.monotonic()
        committed = await self.committed(tp) or 0
        part = await self.restorer.restore(tp.partition, committed)
        self.partitions[tp] = part
        log.info("state_restored", partition=tp.partition, committed=committed, replayed=part.replayed,
                 rolled_back=part.rolled_back, already_emitted=len(part.emitted),
                 duration_ms=round((time.monotonic() - started) * 1000))
        return part

    async def _one(self, tp: TopicPartition, part: PartitionState, record: Any, now_ms: int, changed: set[str]) -> None:
        try:
            update = StatusEvent.model_validate_json(record.value or b"")
        except ValidationError as exc:
            await self._dead_letter(record, describe(field_errors(exc)))
            return
        state = part.get(update.wamid) or MessageState()
        accepted_at = update.accepted_at.timestamp() if update.accepted_at is not None else None
        decision = state.apply(update.status, int(update.timestamp.timestamp()), record.offset, now_ms, accepted_at)
        with self.tracer.start_as_current_span(
            f"process {record.topic}",
            context=context_from_traceparent(header(record, "traceparent")),  # the webhook that carried it
            kind=SpanKind.CONSUMER,
        ) as span:
            if span.is_recording():  # an unrecorded span (no exporter) would drop all this
                _describe(span, record, self.group, update, decision)
            if decision.outcome is Outcome.DUPLICATE:
                STATUS_DUPLICATES.inc()
                return
            part.put(update.wamid, state)
            changed.add(update.wamid)
            await self._emit(tp, part, record, update, decision, traceparent_header(span), exemplar_of(span))

    async def _emit(
        self,
        tp: TopicPartition,
        part: PartitionState,
        record: Any,
        update: StatusEvent,
        decision: Decision,
        traceparent: bytes | None,
        exemplar: dict[str, str] | None,
    ) -> None:
        if decision.outcome is Outcome.OUT_OF_ORDER:
            STATUS_OUT_OF_ORDER.inc()
            log.debug("status_out_of_order", wamid=update.wamid, status=update.status)
        for label, seconds in decision.transitions:
            _transition(label).observe(seconds, exemplar)
        for status, implied_by in decision.emit:
            if (update.wamid, status) in part.emitted:
                continue  # written before a crash, its state was not: the replay must not repeat it
            extra = {STATUS: status.value, SOURCE_OFFSET: str(record.offset)}
            if implied_by is None:
                value = record.value  # the update itself, byte for byte
            else:
                value = _STATUS_JSON.dump_json(_implied(update, status))
                extra["implied-by"] = implied_by.value
            await self.outbox.send(
                self.topics.status_events,
                value,
                key=update.wamid.encode(),
                partition=tp.partition,
                headers=outgoing_headers(traceparent, update.request_id, **extra),
            )
            _status_events(status.value, phone_number_label(update.phone_number_id)).inc(exemplar=exemplar)
            if status is DeliveryStatus.FAILED:
                _count_failure(update, exemplar)

    async def _sweep(self, tp: TopicPartition, part: PartitionState, now_ms: int) -> None:
        """Forget messages silent for longer than the retention: tombstones keep the topic bounded too."""
        self._swept_ms[tp] = now_ms
        cutoff = now_ms - self.retention_ms
        expired = part.expired(cutoff)
        for wamid in expired:
            part.forget(wamid)
            await self.outbox.send(self.topics.status_state, None, key=wamid.encode(), partition=tp.partition)
        if expired:
            log.info("state_expired", partition=tp.partition, messages=len(expired))

    async def _dead_letter(self, record: Any, error: str) -> None:
        letter = dead_letter(record, DeadLetterReason.SCHEMA_INVALID, error)
        await self.outbox.send(
            self.topics.dead_letters, letter.model_dump_json().encode(), key=record.key,
            headers=outgoing_headers(header(record, "traceparent")),
        )
        DEAD_LETTERS.labels(stage=Stage.INGEST, reason=DeadLetterReason.SCHEMA_INVALID).inc()
        log.warning("status_update_dead_lettered", error=error[:500], offset=record.offset)


def _describe(span: Span, record: Any, group: str, update: StatusEvent, decision: Decision) -> None:
    attributes = messaging_attributes(record.topic, record.partition, record.offset, group) | {
        "delivery.status": update.status.value,
        "delivery.outcome": decision.outcome.value,
        "delivery.wamid": update.wamid,
    }
    if update.request_id:
        attributes["delivery.request_id"] = update.request_id
    span.set_attributes(attributes)
    link = link_to(update.traceparent)
    if link is not None:
        span.add_link(link.context)  # the send, minutes or days earlier


def _implied(update: StatusEvent, status: DeliveryStatus) -> StatusEvent:
    """The event a later status implies: same message and time, no pricing/conversation/errors of its own."""
    return update.model_copy(update={"status": status, "pricing": None, "conversation": None, "errors": []})


# Label children cached: `labels()` is a lock and a dict walk per call, thousands of times a second.
@functools.lru_cache(maxsize=1024)
def _status_events(status: str, phone_number_id: str) -> Any:
    _every_status(phone_number_id)
    return STATUS_EVENTS.labels(status=status, phone_number_id=phone_number_id)


@functools.lru_cache(maxsize=1024)
def _every_status(phone_number_id: str) -> None:
    """Every status's series exists at 0 from the number's first event: rate() cannot see the increase
    that gives birth to a series, so a first burst of failed statuses between two scrapes would move
    neither the delivery failure ratio nor its alert."""
    for status in DeliveryStatus:
        STATUS_EVENTS.labels(status=status.value, phone_number_id=phone_number_id)


@functools.lru_cache(maxsize=16)
def _transition(label: str) -> Any:
    return TRANSITION.labels(transition=label)


def _count_failure(update: StatusEvent, exemplar: dict[str, str] | None) -> None:
    error = update.errors[0] if update.errors else None
    FAILURES.labels(
        error_class=error.error_class.value if error else ErrorClass.NONE.value,
        error_code=error_code_label(error.code if error else None, KNOWN_ERROR_CODES),
    ).inc(exemplar=exemplar)
    log.info(
        "message_failed",
        wamid=update.wamid,
        request_id=update.request_id,
        phone_number_id=update.phone_number_id,
        error_code=error.code if error else None,
        error_class=error.error_class if error else None,
    )
