"""Source records -> callback events: the JSON a business's endpoint receives.

    event = event_from_record("send.results", raw)     # None for a topic notify does not serve
    event.event_id                                     # "evt_3f1c…": the same on every replay
    event.body()                                       # the exact bytes POSTed (and signed)

An event's id is a hash of the source record's natural key — request id and outcome, wamid and
status, inbound wamid — never of its topic, offset or arrival time, so a replayed or re-consumed
record yields the same id and receivers deduplicate on it. Pure: no I/O, no clock but the record's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import orjson

from pipeline.contracts import InboundMessage, SendResult, StatusEvent
from pipeline.contracts.vocabulary import CallbackEventType
from pipeline.topics import TopicName

SCHEMA_VERSION = 1


@dataclass(slots=True, eq=False)  # not frozen: a frozen dataclass's __init__ costs 4x (object.__setattr__)
class CallbackEvent:
    """One event for the endpoints subscribed to its business number.

    `recipient` (the customer's wa_id, digits) orders delivery: events of one recipient reach an
    endpoint one at a time, in order. `hold_for_request` names the send request whose result should
    go first (a status that may overtake its result: see docs/callbacks.md, "Order").
    """

    event_id: str
    type: CallbackEventType
    phone_number_id: str | None
    recipient: str | None
    request_id: str | None
    wamid: str | None
    occurred_at: datetime
    data: bytes  # a JSON object, serialised once by pydantic (re-parsing it cost a third of the CPU here)
    received_at: datetime | None = None

    def body(self) -> bytes:
        envelope = orjson.dumps({
            "event_id": self.event_id,
            "type": self.type.value,
            "version": SCHEMA_VERSION,
            "phone_number_id": self.phone_number_id,
            "request_id": self.request_id,
            "wamid": self.wamid,
            "occurred_at": self.occurred_at,
        })
        return envelope[:-1] + b',"data":' + self.data + b"}"

    @property
    def order_key(self) -> str:
        """Events with the same key are delivered to one endpoint in order."""
        return self.recipient or self.wamid or self.event_id


def event_id(*natural_key: str) -> str:
    digest = hashlib.sha256("\x1f".join(natural_key).encode()).hexdigest()
    return f"evt_{digest[:32]}"


def _digits(phone: str | None) -> str | None:
    return phone.removeprefix("+") if phone else None


def from_send_result(result: SendResult) -> CallbackEvent:
    data = result.model_dump_json(exclude={"traceparent", "request_id", "phone_number_id", "wamid"}).encode()
    return CallbackEvent(
        event_id=event_id("send.result", result.request_id, result.outcome.value),
        type=CallbackEventType.SEND_RESULT,
        phone_number_id=result.phone_number_id,
        recipient=_digits(result.to),
        request_id=result.request_id,
        wamid=result.wamid,
        occurred_at=result.completed_at,
        data=data,
        received_at=result.completed_at,
    )


def from_status(status: StatusEvent) -> CallbackEvent:
    data = status.model_dump_json(
        exclude={"traceparent", "request_id", "phone_number_id", "wamid", "received_at"}
    ).encode()
    return CallbackEvent(
        event_id=event_id("status", status.wamid, status.status.value),
        type=CallbackEventType(f"status.{status.status.value}"),
        phone_number_id=status.phone_number_id,
        recipient=_digits(status.recipient_id),
        request_id=status.request_id,
        wamid=status.wamid,
        occurred_at=status.timestamp,
        data=data,
        received_at=status.received_at,
    )


def from_inbound(message: InboundMessage) -> CallbackEvent:
    data = message.model_dump_json(by_alias=True, exclude={"phone_number_id", "wamid", "received_at"}).encode()
    return CallbackEvent(
        event_id=event_id("inbound", message.wamid),
        type=CallbackEventType.INBOUND_MESSAGE,
        phone_number_id=message.phone_number_id,
        recipient=_digits(message.from_),
        request_id=None,
        wamid=message.wamid,
        occurred_at=message.timestamp,
        data=data,
        received_at=message.received_at,
    )


def event_from_record(topic: str, raw: bytes) -> CallbackEvent | None:
    """The event of one record of `topic` (its name without the deployment prefix), or None.

    Raises pydantic's ValidationError (or ValueError) for a record that is not its topic's contract.
    """
    if topic.endswith(TopicName.SEND_RESULTS.value):
        return from_send_result(SendResult.model_validate_json(raw))
    if topic.endswith(TopicName.STATUS_EVENTS.value):
        return from_status(StatusEvent.model_validate_json(raw))
    if topic.endswith(TopicName.INBOUND_MESSAGES.value):
        return from_inbound(InboundMessage.model_validate_json(raw))
    return None
