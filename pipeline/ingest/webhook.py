"""Meta's webhook body → our records: statuses, inbound messages, account events, and counted skips.

    result = normalise(body, received_at=now)
    result.statuses       # [StatusEvent(wamid=…, status=DELIVERED, request_id="req_…", …)]
    result.messages       # [InboundMessage(from_="16505551234", type="interactive", reply_id="track", …)]
    result.account_events # [AccountEvent(kind=TEMPLATE_STATUS, event="PAUSED", …)]
    result.skipped        # [Skip("smb_message_echoes", WebhookSkipReason.ECHO)]
    result.problems       # [Problem(SCHEMA_INVALID, "entry[0].changes[0].value.statuses[1].id: missing — …")]

Every `field` Meta posts has a home (docs/ingest.md has the table): `messages` becomes statuses and
inbound messages, the account-level fields become account events, and the rest is a counted skip
with a documented reason; the raw body stays on `webhooks.raw` either way. A body that is not a
WhatsApp webhook at all, or nests past the parse bound, raises `MalformedWebhook`. One bad item does
not sink its neighbours: it becomes a `problem` (the caller dead-letters the body) and the rest go
through. Oversize items are refused here, before they become records too large for their topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.contracts import (
    AccountEvent,
    CallbackData,
    DeadLetterReason,
    DeliveryStatus,
    ErrorInfo,
    InboundMessage,
    StatusEvent,
    WebhookSkipReason,
    describe,
    field_errors,
)
from pipeline.contracts.meta_errors import classify
from pipeline.ingest.account_events import ACCOUNT_FIELDS, account_events
from pipeline.ingest.bounds import ITEM_BYTES, SMALL_BODY_BYTES, TooDeep, check_depth, oversize
from pipeline.ingest.inbound import inbound_message

MESSAGES_FIELD = "messages"  # the `field` kind that carries statuses and user messages
SKIPPED_FIELDS: dict[str, WebhookSkipReason] = {
    "smb_message_echoes": WebhookSkipReason.ECHO,
    "smb_app_state_sync": WebhookSkipReason.APP_SYNC,
    "history": WebhookSkipReason.APP_SYNC,
    "calls": WebhookSkipReason.CALLS,
}
MAX_PHONE_NUMBER_ID = 64  # StatusEvent's and InboundMessage's bound; Meta's ids are about 15 digits
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class MalformedWebhook(ValueError):
    """The whole body is unusable; `reason` is the dead-letter reason, the message names the field."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Problem:
    reason: DeadLetterReason
    detail: str


@dataclass(frozen=True)
class Skip:
    field: str
    reason: WebhookSkipReason


@dataclass
class Normalised:
    statuses: list[StatusEvent] = field(default_factory=list)
    messages: list[InboundMessage] = field(default_factory=list)
    account_events: list[AccountEvent] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    system_errors: list[dict[str, Any]] = field(default_factory=list)
    measure: bool = True  # whether items are measured against ITEM_BYTES (a small body cannot exceed them)

    def too_big(self, item: Any, limit: int, where: str) -> bool:
        """True (and a `too_large` problem) when `item` is over `limit` bytes as JSON."""
        problem = oversize(item, limit) if self.measure else None
        if problem is not None:
            self.problems.append(Problem(DeadLetterReason.TOO_LARGE, f"{where}: {problem}"))
        return problem is not None


# --- Meta's shapes (only what we read; everything else is allowed and ignored) ---------------------


class _Meta(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


NonEmpty = Annotated[str, Field(min_length=1)]


class _Change(_Meta):
    field: Annotated[str, Field(max_length=64)]
    value: dict[str, Any] = Field(default_factory=dict)


class _Entry(_Meta):
    id: Annotated[str, Field(max_length=64)] | None = None
    changes: list[_Change] = Field(default_factory=list)


class _Envelope(_Meta):
    object: Literal["whatsapp_business_account"]
    entry: list[_Entry]


class _StatusError(_Meta):
    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: dict[str, Any] | None = None


class _Conversation(_Meta):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str | None = None
    expiration_timestamp: datetime | None = None
    origin: dict[str, Any] | None = None


class _Status(_Meta):
    id: NonEmpty
    status: DeliveryStatus
    timestamp: datetime  # Meta sends epoch seconds as a string; pydantic reads those as UTC
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    recipient_parent_user_id: str | None = None
    recipient_type: str | None = None
    recipient_participant_id: str | None = None
    recipient_participant_user_id: str | None = None
    biz_opaque_callback_data: str | None = None
    conversation: _Conversation | None = None
    pricing: dict[str, Any] | None = None
    errors: list[_StatusError] = Field(default_factory=list)


# --- normalisation --------------------------------------------------------------------------------


def normalise(body: bytes, received_at: datetime) -> Normalised:
    try:
        data = orjson.loads(body)  # orjson's own parser stops at 1,024 levels (JSONDecodeError)
    except orjson.JSONDecodeError as exc:
        raise MalformedWebhook(DeadLetterReason.INVALID_JSON, f"(body): not JSON — {exc}") from None
    try:
        check_depth(data, body)
    except TooDeep as exc:
        raise MalformedWebhook(DeadLetterReason.TOO_DEEP, str(exc)) from None
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        raise MalformedWebhook(DeadLetterReason.MALFORMED_WEBHOOK, describe(field_errors(exc, data))) from None

    result = Normalised(measure=len(body) > SMALL_BODY_BYTES)
    for e, entry in enumerate(envelope.entry):
        for c, change in enumerate(entry.changes):
            where = f"entry[{e}].changes[{c}].value"
            if change.field == MESSAGES_FIELD:
                _read_messages(change.value, where, received_at, result)
            elif (kind := ACCOUNT_FIELDS.get(change.field)) is not None:
                if result.too_big(change.value, ITEM_BYTES["account"], where):
                    continue
                try:
                    result.account_events.extend(
                        account_events(kind, change.field, change.value, entry.id, received_at)
                    )
                except ValidationError as exc:
                    result.problems.append(_problem(where, exc, change.value))
            else:
                result.skipped.append(
                    Skip(change.field, SKIPPED_FIELDS.get(change.field, WebhookSkipReason.UNKNOWN_FIELD))
                )
    return result


def _read_messages(value: dict[str, Any], where: str, received_at: datetime, out: Normalised) -> None:
    metadata = value.get("metadata")
    phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    phone_number_id = str(phone_number_id) if phone_number_id is not None else None
    if phone_number_id is not None and len(phone_number_id) > MAX_PHONE_NUMBER_ID:
        # It would be on every record of this value (and a label): refuse the value, not each item.
        out.problems.append(Problem(
            DeadLetterReason.TOO_LARGE,
            f"{where}.metadata.phone_number_id: {len(phone_number_id):,} characters; at most {MAX_PHONE_NUMBER_ID}",
        ))
        return
    contacts = [c for c in _items(value, "contacts", where, out) if isinstance(c, dict)]

    for i, raw in enumerate(_items(value, "statuses", where, out)):
        at = f"{where}.statuses[{i}]"
        if out.too_big(raw, ITEM_BYTES["statuses"], at):
            continue
        try:
            out.statuses.append(_status_event(_Status.model_validate(raw), contacts, phone_number_id, received_at))
        except ValidationError as exc:
            out.problems.append(_problem(at, exc, raw))

    for i, raw in enumerate(_items(value, "messages", where, out)):
        at = f"{where}.messages[{i}]"
        if out.too_big(raw, ITEM_BYTES["messages"], at):
            continue
        try:
            out.messages.append(inbound_message(raw, contacts, phone_number_id, received_at))
        except ValidationError as exc:
            out.problems.append(_problem(at, exc, raw))

    out.system_errors.extend(e for e in _items(value, "errors", where, out) if isinstance(e, dict))


def _items(value: dict[str, Any], key: str, where: str, out: Normalised) -> list[Any]:
    items = value.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        out.problems.append(Problem(DeadLetterReason.SCHEMA_INVALID, f"{where}.{key}: list_type — must be a list"))
        return []
    return items


def _problem(where: str, exc: ValidationError, raw: Any) -> Problem:
    detail = "; ".join(f"{where}.{e.field}: {e.rule} — {e.message}" for e in field_errors(exc, raw))
    return Problem(DeadLetterReason.SCHEMA_INVALID, detail)


def _status_event(
    status: _Status, contacts: list[dict[str, Any]], phone_number_id: str | None, received_at: datetime
) -> StatusEvent:
    callback = CallbackData.decode(status.biz_opaque_callback_data)
    traceparent = callback.traceparent if callback is not None else None
    conversation = None
    if status.conversation is not None:
        origin = status.conversation.origin or {}
        conversation = {
            "id": status.conversation.id,
            "expiration_timestamp": status.conversation.expiration_timestamp,
            "origin_type": origin.get("type"),
            **(status.conversation.model_extra or {}),
        }
    # Meta names the recipient's BSUID on the status itself or (sent, delivered, read) in contacts[].
    contact = next((c for c in contacts if status.recipient_id and c.get("wa_id") == status.recipient_id), {})
    return StatusEvent.model_validate(
        {
            "wamid": status.id,
            "status": status.status,
            "timestamp": status.timestamp,
            "recipient_id": status.recipient_id,
            "recipient_user_id": status.recipient_user_id or _str(contact.get("user_id")),
            "recipient_parent_user_id": status.recipient_parent_user_id or _str(contact.get("parent_user_id")),
            "recipient_type": status.recipient_type,
            "recipient_participant_id": status.recipient_participant_id,
            "recipient_participant_user_id": status.recipient_participant_user_id,
            "phone_number_id": phone_number_id,
            "request_id": callback.request_id if callback is not None else None,
            # Only a W3C traceparent can become a span link; other tools put other things there.
            "traceparent": traceparent if traceparent and _TRACEPARENT.match(traceparent) else None,
            "accepted_at": callback.accepted_at if callback is not None else None,
            "conversation": conversation,
            "pricing": status.pricing,
            "errors": [_error_info(e) for e in status.errors],
            "received_at": received_at,
        }
    )


def _error_info(error: _StatusError) -> ErrorInfo:
    details = (error.error_data or {}).get("details")
    return ErrorInfo(
        code=error.code,
        error_class=classify(error.code),
        title=error.title,
        message=error.message,
        details=str(details) if details is not None else None,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
