"""Records of the four topics → one batch of row changes. Pure: no I/O, no clock.

    changes, rejects = project([Record(TopicName.SEND_RESULTS, raw, partition=0, offset=7, timestamp_ms=…)])
    changes.outbound["req_01…"].outcome       # "sent"
    rejects[0].reason                         # DeadLetterReason.SCHEMA_INVALID, with `.error`

Every record maps to upserts keyed by natural keys (request id, (wamid, status), inbound wamid), so a
replayed record changes nothing. A status carries its request id (from the callback data), so a status
that arrives before its send result still lands on its request's row; the status columns themselves
are recomputed from the timeline by the backend (highest rank wins), so they never move backwards.
A record that does not parse is returned as a reject, to be dead-lettered; it never stops the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from pydantic import ValidationError

from pipeline.contracts import InboundMessage, SendRequest, SendResult, StatusEvent
from pipeline.contracts.vocabulary import DeadLetterReason
from pipeline.observability.context import parse_traceparent
from pipeline.store.rows import Changes, InboundRow, OutboundRow, StatusRow
from pipeline.store.text import searchable_text
from pipeline.topics import TopicName

PROJECTED = (TopicName.SEND_REQUESTS, TopicName.SEND_RESULTS, TopicName.STATUS_EVENTS, TopicName.INBOUND_MESSAGES)

_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


@dataclass(frozen=True, slots=True)
class Record:
    topic: TopicName
    value: bytes | None
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0  # Kafka's record time: the last resort for a time


@dataclass(frozen=True, slots=True)
class Reject:
    record: Record
    reason: DeadLetterReason
    error: str


def project(records: Iterable[Record]) -> tuple[Changes, list[Reject]]:
    changes = Changes()
    rejects: list[Reject] = []
    for record in records:
        try:
            _project_one(record, changes)
        except orjson.JSONDecodeError as exc:
            rejects.append(Reject(record, DeadLetterReason.INVALID_JSON, str(exc)[:4096]))
        except ValidationError as exc:
            # Field paths and rules only: the values may be message text or phone numbers.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(record)'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            )
            rejects.append(Reject(record, DeadLetterReason.SCHEMA_INVALID, problems[:4096]))
    return changes, rejects


def _project_one(record: Record, changes: Changes) -> None:
    if record.value is None:
        raise orjson.JSONDecodeError("a record without a value (tombstone)", "", 0)
    data = orjson.loads(record.value)
    if record.topic is TopicName.SEND_REQUESTS:
        request = SendRequest.model_validate(data)
        # The text from the JSON just parsed: the same strings as the validated body, without dumping it again.
        changes.add_outbound(request_row(request, record.timestamp_ms, searchable_text(data["message"])))
    elif record.topic is TopicName.SEND_RESULTS:
        changes.add_outbound(result_row(SendResult.model_validate(data), record.timestamp_ms))
    elif record.topic is TopicName.STATUS_EVENTS:
        event = StatusEvent.model_validate(data)
        changes.add_status(status_row(event))
        if event.request_id:
            changes.add_outbound(
                OutboundRow(
                    request_id=event.request_id,
                    created_at=created_at(event.request_id, event.accepted_at, record.timestamp_ms),
                    phone_number_id=event.phone_number_id,
                    wa_id=event.recipient_id,
                    accepted_at=event.accepted_at,
                    wamid=event.wamid,
                )
            )
    elif record.topic is TopicName.INBOUND_MESSAGES:
        changes.add_inbound(inbound_row(InboundMessage.model_validate(data)))
    else:  # the subscriber only hands over the four topics
        raise ValueError(f"the store does not project {record.topic}")


def request_row(request: SendRequest, timestamp_ms: int, text: str | None) -> OutboundRow:
    return OutboundRow(
        request_id=request.request_id,
        created_at=created_at(request.request_id, request.accepted_at, timestamp_ms),
        phone_number_id=request.phone_number_id,
        wa_id=contact_of(request.to, request.recipient_user_id),
        message_type=request.message_type,
        text=text,
        metadata=orjson.dumps(request.metadata).decode() if request.metadata else None,
        accepted_at=request.accepted_at,
    )


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id a valid `traceparent` names, as the 32 hex digits trace UIs take; else None."""
    context = parse_traceparent(traceparent)
    return None if context is None else format(context.trace_id, "032x")


def result_row(result: SendResult, timestamp_ms: int) -> OutboundRow:
    error = result.error
    return OutboundRow(
        request_id=result.request_id,
        created_at=created_at(result.request_id, result.accepted_at, timestamp_ms),
        phone_number_id=result.phone_number_id,
        wa_id=contact_of(result.to, result.recipient_user_id),
        accepted_at=result.accepted_at,
        outcome=result.outcome.value,
        wamid=result.wamid,
        attempts=result.attempts,
        error_code=error.code if error else None,
        error_title=error.title if error else None,
        error_class=error.error_class.value if error else None,
        error_message=error.message if error else None,
        completed_at=result.completed_at,
        trace_id=trace_id_of(result.traceparent),
    )


def status_row(event: StatusEvent) -> StatusRow:
    error = event.errors[0] if event.errors else None
    return StatusRow(
        wamid=event.wamid,
        status=event.status.value,
        occurred_at=event.timestamp,
        request_id=event.request_id,
        phone_number_id=event.phone_number_id,
        wa_id=event.recipient_id,
        pricing_category=event.pricing.category if event.pricing else None,
        error_code=error.code if error else None,
        error_title=error.title if error else None,
        error_class=error.error_class.value if error else None,
        error_message=error.message if error else None,
    )


def inbound_row(message: InboundMessage) -> InboundRow:
    return InboundRow(
        wamid=message.wamid,
        wa_id=contact_of(message.from_, message.user_id),
        occurred_at=message.timestamp,
        phone_number_id=message.phone_number_id,
        message_type=message.type,
        text=message.text if message.text is not None else message.reply_title,
        reply_to=message.context_wamid,
    )


def contact_of(phone: str | None, user_id: str | None) -> str:
    """The contact a conversation is filed under: the number as Meta writes it, else the BSUID (its only handle)."""
    return wa_id(phone) if phone is not None else str(user_id)


def wa_id(phone: str) -> str:
    """Meta's form of a number: digits only (`+16505551234` → `16505551234`)."""
    digits = phone[1:] if phone.startswith("+") else phone
    return digits if digits.isdigit() else "".join(c for c in phone if c.isdigit())


def created_at(request_id: str, accepted_at: datetime | None, timestamp_ms: int) -> datetime:
    """The request's row time, which every record of one request must agree on (it is part of the key
    on PostgreSQL, whose tables are partitioned by it).

    The time inside a `req_<ULID>` id comes first because every record carries the id; then the API's
    `accepted_at`, which the request, the result and the callback data all carry; the Kafka record time
    only for foreign ids published without `accepted_at`.
    """
    ulid_ms = ulid_time_ms(request_id)
    if ulid_ms is not None:
        return datetime.fromtimestamp(ulid_ms / 1000, tz=UTC)
    if accepted_at is not None:
        return accepted_at
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)


def ulid_time_ms(request_id: str) -> int | None:
    """The millisecond time of a `req_<ULID>` request id (`new_request_id`), else None."""
    if not request_id.startswith("req_") or len(request_id) != 30:
        return None
    value = 0
    for char in request_id[4:14]:
        digit = _CROCKFORD.get(char)
        if digit is None:
            return None
        value = value * 32 + digit
    return value if value < 2**48 else None
