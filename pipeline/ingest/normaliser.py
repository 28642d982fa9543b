"""`webhooks.raw` → `status.updates` (key wamid), `inbound.messages` (key user wa_id), `dead-letters`.

    normaliser = Normaliser(Outbox(producer), TopicCatalog(settings.kafka), tracer, group)
    subscribe(broker, BatchHandler(normaliser), topics.webhooks_raw, group, settings)   # see `consumer`

Stateless: a replayed webhook (a crash before the commit, or Meta redelivering) only produces the
same status updates again, which the state processor drops as duplicates. Inbound messages are
at-least-once too: their `wamid` identifies a redelivered one.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from opentelemetry.trace import SpanKind, Tracer
from pydantic import TypeAdapter

from pipeline.contracts import (
    DeadLetterReason,
    InboundMessage,
    Stage,
    StatusEvent,
    WebhookOutcome,
)
from pipeline.ingest.consumer import Outbox
from pipeline.ingest.records import dead_letter, header, outgoing_headers
from pipeline.ingest.webhook import MalformedWebhook, Normalised, normalise
from pipeline.observability import get_logger
from pipeline.observability.context import context_from_traceparent, link_to, traceparent_header
from pipeline.observability.kafka import messaging_attributes
from pipeline.observability.metrics import DEAD_LETTERS, INBOUND_MESSAGES, WEBHOOKS
from pipeline.topics import TopicCatalog

log = get_logger(__name__)

_STATUS_JSON = TypeAdapter(StatusEvent)
_INBOUND_JSON = TypeAdapter(InboundMessage)
_MAX_LINKS = 32  # a span with hundreds of links helps no one; the per-status spans link too
# Inbound `type` is a metric label: Meta's documented kinds, anything newer counts as "other".
INBOUND_TYPES = frozenset(
    {
        "text", "image", "video", "audio", "document", "sticker", "location", "contacts", "reaction",
        "button", "interactive", "order", "system", "request_welcome", "unsupported",
    }
)


class Normaliser:
    def __init__(self, outbox: Outbox, topics: TopicCatalog, tracer: Tracer, group: str) -> None:
        self.outbox = outbox
        self.topics = topics
        self.tracer = tracer
        self.group = group

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        return None

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        return None

    async def flush(self) -> None:
        await self.outbox.flush()

    async def process(self, tp: TopicPartition, records: list[Any]) -> None:
        for record in records:
            await self._one(record)
            await asyncio.sleep(0)  # a batch must not hold the event loop the webhook receiver shares

    async def _one(self, record: Any) -> None:
        with self.tracer.start_as_current_span(
            f"process {record.topic}",
            context=context_from_traceparent(header(record, "traceparent")),  # the webhook POST's server span
            kind=SpanKind.CONSUMER,
            attributes=messaging_attributes(record.topic, record.partition, record.offset, self.group),
        ) as span:
            traceparent = traceparent_header(span)
            try:
                result = normalise(record.value or b"", _received_at(record))
            except MalformedWebhook as exc:
                await self._dead_letter(record, exc.reason, str(exc), traceparent)
                return
            for event in result.statuses[:_MAX_LINKS] if span.is_recording() else ():
                link = link_to(event.traceparent)
                if link is not None:
                    span.add_link(link.context, {"wamid": event.wamid})
            span.set_attributes({"ingest.statuses": len(result.statuses), "ingest.messages": len(result.messages)})
            await self._publish(result, traceparent)
            if result.problems:
                await self._dead_letter(
                    record, DeadLetterReason.SCHEMA_INVALID, "; ".join(result.problems), traceparent
                )

    async def _publish(self, result: Normalised, traceparent: bytes | None) -> None:
        for event in result.statuses:
            await self.outbox.send(
                self.topics.status_updates,
                _STATUS_JSON.dump_json(event),
                key=event.wamid.encode(),
                headers=outgoing_headers(traceparent, event.request_id),
            )
        for message in result.messages:
            await self.outbox.send(
                self.topics.inbound_messages,
                _INBOUND_JSON.dump_json(message, by_alias=True),
                key=message.from_.encode(),
                headers=outgoing_headers(traceparent),
            )
            INBOUND_MESSAGES.labels(type=message.type if message.type in INBOUND_TYPES else "other").inc()
        for kind in result.skipped:
            log.debug("webhook_field_skipped", field=kind)
        for error in result.system_errors:
            log.warning("webhook_system_error", error_code=error.get("code"), title=error.get("title"))

    async def _dead_letter(self, record: Any, reason: DeadLetterReason, error: str, traceparent: bytes | None) -> None:
        letter = dead_letter(record, reason, error)
        await self.outbox.send(
            self.topics.dead_letters, letter.model_dump_json().encode(), key=record.key,
            headers=outgoing_headers(traceparent),
        )
        WEBHOOKS.labels(outcome=WebhookOutcome.MALFORMED).inc()
        DEAD_LETTERS.labels(stage=Stage.INGEST, reason=reason).inc()
        log.warning("webhook_dead_lettered", reason=reason, error=error[:500], offset=record.offset)


def _received_at(record: Any) -> datetime:
    raw = header(record, "received-at")
    if raw:
        try:
            return datetime.fromisoformat(raw.decode())
        except ValueError:
            pass
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)
