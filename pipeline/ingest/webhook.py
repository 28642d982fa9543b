"""Meta's webhook body → our records: one `StatusEvent` per status, one `InboundMessage` per user message.

    result = normalise(body, received_at=now)
    result.statuses       # [StatusEvent(wamid=…, status=DELIVERED, request_id="req_…", …)]
    result.messages       # [InboundMessage(from_="16505551234", type="interactive", reply_id="track", …)]
    result.problems       # ["entry[0].changes[0].value.statuses[1].id: missing — Field required"]

A body that is not a WhatsApp webhook at all raises `MalformedWebhook`. One bad status or message
does not sink its neighbours: it becomes a `problem` (the caller dead-letters the body) and the rest
go through. Unknown fields are ignored here (the raw body stays on `webhooks.raw`); unknown `field`
kinds (template status updates, account updates, …) are listed in `skipped`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.contracts import (
    CallbackData,
    DeadLetterReason,
    DeliveryStatus,
    ErrorInfo,
    InboundMessage,
    StatusEvent,
    describe,
    field_errors,
)
from pipeline.whatsapp.errors import classify

MESSAGES_FIELD = "messages"  # the only `field` kind that carries statuses and user messages
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class MalformedWebhook(ValueError):
    """The whole body is unusable; `reason` is the dead-letter reason, the message names the field."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class Normalised:
    statuses: list[StatusEvent] = field(default_factory=list)
    messages: list[InboundMessage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    system_errors: list[dict[str, Any]] = field(default_factory=list)


# --- Meta's shapes (only what we read; everything else is allowed and ignored) ---------------------


class _Meta(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


NonEmpty = Annotated[str, Field(min_length=1)]


class _Change(_Meta):
    field: str
    value: dict[str, Any] = Field(default_factory=dict)


class _Entry(_Meta):
    id: str | None = None
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
    biz_opaque_callback_data: str | None = None
    conversation: _Conversation | None = None
    pricing: dict[str, Any] | None = None
    errors: list[_StatusError] = Field(default_factory=list)


class _Message(_Meta):
    id: NonEmpty
    from_: Annotated[NonEmpty, Field(alias="from")]
    timestamp: datetime
    type: NonEmpty
    context: dict[str, Any] | None = None


# --- normalisation --------------------------------------------------------------------------------


def normalise(body: bytes, received_at: datetime) -> Normalised:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedWebhook(DeadLetterReason.INVALID_JSON, f"(body): not JSON — {exc}") from None
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        raise MalformedWebhook(DeadLetterReason.MALFORMED_WEBHOOK, describe(field_errors(exc, data))) from None

    result = Normalised()
    for e, entry in enumerate(envelope.entry):
        for c, change in enumerate(entry.changes):
            where = f"entry[{e}].changes[{c}]"
            if change.field != MESSAGES_FIELD:
                result.skipped.append(change.field)
                continue
            _read_value(change.value, f"{where}.value", received_at, result)
    return result


def _read_value(value: dict[str, Any], where: str, received_at: datetime, out: Normalised) -> None:
    metadata = value.get("metadata")
    phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    phone_number_id = str(phone_number_id) if phone_number_id is not None else None

    for i, raw in enumerate(_items(value, "statuses", where, out)):
        try:
            out.statuses.append(_status_event(_Status.model_validate(raw), phone_number_id, received_at))
        except ValidationError as exc:
            out.problems.append(_problem(f"{where}.statuses[{i}]", exc, raw))

    contacts = [c for c in _items(value, "contacts", where, out) if isinstance(c, dict)]
    for i, raw in enumerate(_items(value, "messages", where, out)):
        try:
            message = _Message.model_validate(raw)
            out.messages.append(_inbound_message(message, raw, contacts, phone_number_id, received_at))
        except ValidationError as exc:
            out.problems.append(_problem(f"{where}.messages[{i}]", exc, raw))

    out.system_errors.extend(e for e in _items(value, "errors", where, out) if isinstance(e, dict))


def _items(value: dict[str, Any], key: str, where: str, out: Normalised) -> list[Any]:
    items = value.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        out.problems.append(f"{where}.{key}: list_type — must be a list")
        return []
    return items


def _problem(where: str, exc: ValidationError, raw: Any) -> str:
    return "; ".join(f"{where}.{e.field}: {e.rule} — {e.message}" for e in field_errors(exc, raw))


def _status_event(status: _Status, phone_number_id: str | None, received_at: datetime) -> StatusEvent:
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
    return StatusEvent.model_validate(
        {
            "wamid": status.id,
            "status": status.status,
            "timestamp": status.timestamp,
            "recipient_id": status.recipient_id,
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


def _inbound_message(
    message: _Message,
    raw: dict[str, Any],
    contacts: list[dict[str, Any]],
    phone_number_id: str | None,
    received_at: datetime,
) -> InboundMessage:
    text, reply_id, reply_title, context_wamid = _content(message.type, raw)
    context = message.context or {}
    return InboundMessage(
        wamid=message.id,
        from_=message.from_,
        phone_number_id=phone_number_id,
        timestamp=message.timestamp,
        type=message.type,
        profile_name=_profile_name(contacts, message.from_),
        context_wamid=context_wamid or _str(context.get("id")),
        text=text,
        reply_id=reply_id,
        reply_title=reply_title,
        raw=raw,
        received_at=received_at,
    )


_MEDIA = ("image", "video", "document", "audio", "sticker")


def _content(kind: str, raw: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """(text, reply id, reply title, wamid it refers to) for the kinds people build flows on."""
    body = raw.get(kind)
    body = body if isinstance(body, dict) else {}
    if kind == "text":
        return _str(body.get("body")), None, None, None
    if kind == "button":  # a template's quick-reply button
        return _str(body.get("text")), _str(body.get("payload")), _str(body.get("text")), None
    if kind == "interactive":
        reply = body.get(str(body.get("type")))
        if isinstance(reply, dict):  # button_reply, list_reply, nfm_reply
            title = _str(reply.get("title"))
            return title or _str(reply.get("body")), _str(reply.get("id")), title, None
        return None, None, None, None
    if kind == "reaction":
        return _str(body.get("emoji")), None, None, _str(body.get("message_id"))
    if kind in _MEDIA:
        return _str(body.get("caption")), None, None, None
    if kind == "system":
        return _str(body.get("body")), None, None, None
    return None, None, None, None  # location, contacts, order, unsupported, …: all in `raw`


def _profile_name(contacts: list[dict[str, Any]], wa_id: str) -> str | None:
    for contact in contacts:
        if contact.get("wa_id") == wa_id:
            profile = contact.get("profile")
            return _str(profile.get("name")) if isinstance(profile, dict) else None
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
