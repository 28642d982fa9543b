"""Stored rows → the read API's JSON bodies (docs/store.md shows each shape). Pure.

    message_body(view, timeline)      # GET /v1/messages/{request_id}
    encode_cursor(Cursor(at, id))     # opaque `next_cursor`; decode_cursor reverses it (None if bad)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipeline.store.backend import Cursor
from pipeline.store.rows import ACCEPTED, ConversationItem, MessageView, StatusRow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace(".000+00:00", "Z").replace("+00:00", "Z")


def _error(code: int | None, title: str | None, error_class: str | None, message: str | None) -> dict[str, Any] | None:
    if code is None and title is None and error_class is None:
        return None
    return {"code": code, "title": title, "class": error_class, "message": message}


def to_number(wa_id: str | None) -> str | None:
    return None if wa_id is None else f"+{wa_id}"


def message_body(view: MessageView, timeline: Sequence[StatusRow]) -> dict[str, Any]:
    error = _error(view.error_code, view.error_title, view.error_class, view.error_message)
    failed = next((s for s in timeline if s.status == "failed"), None)
    if error is None and failed is not None:
        error = _error(failed.error_code, failed.error_title, failed.error_class, failed.error_message)
    accepted = rfc3339(view.accepted_at or view.created_at)
    steps: list[dict[str, Any]] = [{"status": ACCEPTED, "at": accepted, "pricing_category": None, "error": None}]
    steps += [
        {"status": s.status, "at": rfc3339(s.occurred_at), "pricing_category": s.pricing_category,
         "error": _error(s.error_code, s.error_title, s.error_class, s.error_message)}
        for s in timeline
    ]
    return {
        "request_id": view.request_id,
        "phone_number_id": view.phone_number_id,
        "to": to_number(view.wa_id),
        "wa_id": view.wa_id,
        "type": view.message_type,
        "text": view.text,
        "metadata": orjson.loads(view.metadata) if view.metadata else {},
        "accepted_at": rfc3339(view.accepted_at),
        "outcome": view.outcome,
        "wamid": view.wamid,
        "status": view.status,
        "error": error,
        "timeline": steps,
        "trace_id": view.trace_id,
    }


def summary_body(view: MessageView) -> dict[str, Any]:
    return {
        "request_id": view.request_id,
        "phone_number_id": view.phone_number_id,
        "to": to_number(view.wa_id),
        "wa_id": view.wa_id,
        "type": view.message_type,
        "text": view.text,
        "accepted_at": rfc3339(view.accepted_at),
        "outcome": view.outcome,
        "status": view.status,
        "wamid": view.wamid,
    }


def item_body(item: ConversationItem) -> dict[str, Any]:
    return {
        "direction": item.direction,
        "id": item.id,
        "wamid": item.wamid,
        "phone_number_id": item.phone_number_id,
        "type": item.message_type,
        "text": item.text,
        "at": rfc3339(item.at),
        "status": item.status,
        "reply_to": item.reply_to,
    }


def encode_cursor(cursor: Cursor) -> str:
    # Microseconds: PostgreSQL keeps them, and a coarser cursor could skip rows of the same millisecond.
    micros = (cursor.at - _EPOCH) // timedelta(microseconds=1)
    raw = f"{micros}|{cursor.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> Cursor | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        at_ms, _, ident = raw.partition("|")
        if not ident or not at_ms.isdigit():
            return None
        return Cursor(_EPOCH + timedelta(microseconds=int(at_ms)), ident)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        return None
