"""`webhooks.raw` → `status.updates` (key wamid), `inbound.messages` (key user), `account.events`
(key waba_id), `dead-letters`.

    normaliser = Normaliser(Outbox(producer), TopicCatalog(settings.kafka), tracer, group)
    subscribe(broker, BatchHandler(normaliser), topics.webhooks_raw, group, settings)   # see `consumer`

Stateless: a replayed webhook (a crash before the commit, or Meta redelivering) only produces the
same status updates again, which the state processor drops as duplicates. Inbound messages are
at-least-once too: their `wamid` identifies a redelivered one. A webhook field with no record of its
own is counted in `delivery_webhook_skipped_total{field, reason}`, never dropped without a trace.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from opentelemetry.trace import SpanKind, Tracer
from pydantic import TypeAdapter

from pipeline.contracts import (
    AccountEvent,
    DeadLetterReason,
    InboundMessage,
    Stage,
    StatusEvent,
    WebhookOutcome,
)
from pipeline.ingest.account_events import ACCOUNT_FIELDS
from pipeline.ingest.consumer import Outbox
from pipeline.ingest.records import dead_letter, header, outgoing_headers
from pipeline.ingest.webhook import MESSAGES_FIELD, SKIPPED_FIELDS, MalformedWebhook, Normalised, Problem, normalise
from pipeline.observability import get_logger
from pipeline.observability.context import context_from_traceparent, link_to, traceparent_header
from pipeline.observability.metrics import (
    ACCOUNT_EVENTS,
    DEAD_LETTERS,
    INBOUND_MESSAGES,
    WEBHOOK_SKIPPED,
    WEBHOOKS,
)
from pipeline.observability.tracing import messaging_attributes
from pipeline.topics import TopicCatalog, TopicName, max_message_bytes

log = get_logger(__name__)

_STATUS_JSON = TypeAdapter(StatusEvent)
_INBOUND_JSON = TypeAdapter(InboundMessage)
_ACCOUNT_JSON = TypeAdapter(AccountEvent)
# Room left in a record's topic for its key, headers and batch framing.
_RECORD_MARGIN = 64 * 1024
_MAX_LINKS = 32  # a span with hundreds of links helps no one; the per-status spans link too
# Inbound `type` is a metric label: Meta's documented kinds, anything newer counts as "other".
INBOUND_TYPES = frozenset(
    {
        "text", "image", "video", "audio", "document", "sticker", "location", "contacts", "reaction",
        "button", "interactive", "order", "system", "request_welcome", "unsupported", "edit", "revoke",
    }
)
# `field` and account `event` are metric labels too: known values verbatim, anything else "other".
KNOWN_FIELDS = frozenset({MESSAGES_FIELD, *ACCOUNT_FIELDS, *SKIPPED_FIELDS})
_EVENT_LABEL = re.compile(r"^[A-Z][A-Z0-9_]{0,47}$")


@dataclass(frozen=True, slots=True)
class _Output:
    topic: TopicName
    what: str  # for a dead letter's reason: never the content itself
    value: bytes
    key: bytes
    headers: list[tuple[str, bytes]]
    counter: Any = None  # the metric child to count once the record is sent


class Normaliser:
    def __init__(self, outbox: Outbox, topics: TopicCatalog, tracer: Tracer, group: str) -> None:
        self.outbox = outbox
        self.topics = topics
        self.tracer = tracer
        self.group = group
        # The alerted account events exist at 0 from the start: increase() cannot see the event that
        # gives birth to a series, and an alert's expression must return data before the first one.
        for kind, event in ALERTED_ACCOUNT_EVENTS:
            ACCOUNT_EVENTS.labels(kind=kind, event=event)

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
            span.set_attributes({
                "ingest.statuses": len(result.statuses),
                "ingest.messages": len(result.messages),
                "ingest.account_events": len(result.account_events),
            })
            problems = await self._publish(result, traceparent)
            if problems:
                await self._dead_letter(
                    record, problems[0].reason, "; ".join(p.detail for p in problems), traceparent
                )

    async def _publish(self, result: Normalised, traceparent: bytes | None) -> list[Problem]:
        """Send every record of `result`; return its problems plus any record too large for its topic."""
        problems = list(result.problems)
        outputs: list[_Output] = []
        for event in result.statuses:
            outputs.append(_Output(
                TopicName.STATUS_UPDATES, f"status {event.status.value}", _STATUS_JSON.dump_json(event),
                event.wamid.encode(), outgoing_headers(traceparent, event.request_id),
            ))
        for message in result.messages:
            kind = message.type if message.type in INBOUND_TYPES else "other"
            outputs.append(_Output(
                TopicName.INBOUND_MESSAGES, f"message of type {kind}", _INBOUND_JSON.dump_json(message, by_alias=True),
                message.user_key.encode(), outgoing_headers(traceparent), INBOUND_MESSAGES.labels(type=kind),
            ))
        for account in result.account_events:
            outputs.append(_Output(
                TopicName.ACCOUNT_EVENTS, f"account event {account.kind.value}", _ACCOUNT_JSON.dump_json(account),
                (account.waba_id or "").encode(), outgoing_headers(traceparent),
                ACCOUNT_EVENTS.labels(kind=account.kind, event=_event_label(account.event)),
            ))
        for out in outputs:
            # The edge bounds every item; this guard makes "never larger than its topic" hold by construction.
            limit = max_message_bytes(out.topic) - _RECORD_MARGIN
            if len(out.value) + len(out.key) > limit:
                detail = f"{out.what}: {len(out.value):,} bytes; {out.topic.value} takes {limit:,}"
                problems.append(Problem(DeadLetterReason.TOO_LARGE, detail))
                continue
            await self.outbox.send(self.topics.name(out.topic), out.value, key=out.key, headers=out.headers)
            if out.counter is not None:
                out.counter.inc()
        for skip in result.skipped:
            field = skip.field if skip.field in KNOWN_FIELDS else "other"
            WEBHOOK_SKIPPED.labels(field=field, reason=skip.reason).inc()
        for error in result.system_errors:
            log.warning("webhook_system_error", error_code=error.get("code"), title=str(error.get("title"))[:200])
        return problems

    async def _dead_letter(self, record: Any, reason: DeadLetterReason, error: str, traceparent: bytes | None) -> None:
        letter = dead_letter(record, reason, error)
        await self.outbox.send(
            self.topics.dead_letters, letter.model_dump_json().encode(), key=record.key,
            headers=outgoing_headers(traceparent),
        )
        WEBHOOKS.labels(outcome=WebhookOutcome.MALFORMED).inc()
        DEAD_LETTERS.labels(stage=Stage.INGEST, reason=reason).inc()
        log.warning("webhook_dead_lettered", reason=reason, error=error[:500], offset=record.offset)


ALERTED_ACCOUNT_EVENTS = (  # deploy/prometheus/rules/account.yml
    ("template_status", "PAUSED"), ("template_status", "DISABLED"), ("template_quality", "RED"),
    ("phone_number_quality", "FLAGGED"), ("account", "ACCOUNT_RESTRICTION"), ("account", "ACCOUNT_VIOLATION"),
    ("account", "DISABLED_UPDATE"),
)


def _event_label(event: str | None) -> str:
    if event is None:
        return "none"
    return event if _EVENT_LABEL.match(event) else "other"


def _received_at(record: Any) -> datetime:
    raw = header(record, "received-at")
    if raw:
        try:
            return datetime.fromisoformat(raw.decode())
        except ValueError:
            pass
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)
