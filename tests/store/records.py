"""Builders of the records the store consumes, as JSON bytes on their topics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipeline.contracts.messages import new_request_id
from pipeline.store.projection import Record
from pipeline.topics import TopicName

NUMBER_A = "106540352242922"
NUMBER_B = "106540352242999"
CONTACT = "16505551234"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def request(request_id: str | None = None, *, number: str = NUMBER_A, to: str = CONTACT,
            text: str = "Your order 12345 shipped",
            accepted: datetime = T0, **extra: Any) -> Record:
    body = {"request_id": request_id or new_request_id(), "phone_number_id": number, "to": f"+{to}",
            "message": {"type": "text", "text": {"body": text}}, "accepted_at": iso(accepted), **extra}
    return Record(TopicName.SEND_REQUESTS, orjson.dumps(body))


def result(request_id: str, wamid: str | None, *, number: str = NUMBER_A, to: str = CONTACT, outcome: str = "sent",
           accepted: datetime = T0, error: dict[str, Any] | None = None, traceparent: str | None = None) -> Record:
    body: dict[str, Any] = {"request_id": request_id, "phone_number_id": number, "to": f"+{to}", "outcome": outcome,
                            "wamid": wamid, "attempts": 1, "accepted_at": iso(accepted), "traceparent": traceparent}
    if error is not None:
        body["error"] = error
    return Record(TopicName.SEND_RESULTS, orjson.dumps(body))


def status(wamid: str, state: str, when: datetime, *, request_id: str | None = None, number: str = NUMBER_A,
           to: str = CONTACT, accepted: datetime | None = T0, errors: list[dict[str, Any]] | None = None) -> Record:
    body: dict[str, Any] = {"wamid": wamid, "status": state, "timestamp": iso(when), "recipient_id": to,
                            "phone_number_id": number, "request_id": request_id,
                            "accepted_at": iso(accepted) if accepted else None,
                            "pricing": {"category": "utility", "billable": True}, "errors": errors or []}
    return Record(TopicName.STATUS_EVENTS, orjson.dumps(body))


def inbound(wamid: str, when: datetime, *, number: str = NUMBER_A, sender: str = CONTACT, text: str = "Thanks!",
            reply_to: str | None = None) -> Record:
    body = {"wamid": wamid, "from": sender, "phone_number_id": number, "timestamp": iso(when), "type": "text",
            "text": text, "context_wamid": reply_to}
    return Record(TopicName.INBOUND_MESSAGES, orjson.dumps(body))


def delivered_chain(request_id: str, wamid: str, *, number: str = NUMBER_A, to: str = CONTACT,
                    accepted: datetime = T0, upto: str = "read") -> list[Record]:
    """A request, its result and its statuses up to `upto`, in the natural order."""
    records = [request(request_id, number=number, to=to, accepted=accepted),
               result(request_id, wamid, number=number, to=to, accepted=accepted)]
    for offset, state in enumerate(("sent", "delivered", "read")):
        records.append(status(wamid, state, accepted + timedelta(seconds=1 + offset * 2), request_id=request_id,
                              number=number, to=to, accepted=accepted))
        if state == upto:
            break
    return records
