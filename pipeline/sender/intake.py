"""Intake: what to do with one fetched record of `send.requests`, decided without I/O.

    rules = Rules(default_number="106540352242922", content=ContentPolicy(patterns))
    decision = decide(record, rules, partitions=12, wall=time.time())
    # Dispatch(request, number, ttl)   schedule it (ttl: seconds left until expires_at, or None)
    # Expired(request, number)         its expires_at has passed: conclude it as `expired`, unsent
    # DeadLetter(rejected, request)    not a request we may send: dead-letter it (request None if undecodable)
    # Reroute(request, number, home)   its number lives on partition `home`: re-publish it keyed by the number

Contract: `decide` reads the record, the partition count and the wall clock it is given, and nothing else; it publishes,
schedules, counts and logs nothing, and the same record with the same `wall` gets the same decision.
The engine acts on the decision (schedule, conclude, dead-letter or re-route), and every one of
those paths ends the record's offset in `OffsetTracker.done`. Records already done before a restart
never get here: skipping them is the engine's (`OffsetTracker.already_done`), since it is
bookkeeping of the partition, not a property of the record.

A record without a `request_id` gets `<topic>:<partition>:<offset>` (the model's default would be
a new random id at every decode, so a re-read would be another request); whether the id was given
is asked of pydantic (`model_fields_set`), not of the bytes, since metadata may hold a
`request_id` key of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.contracts import ContentPolicy, DeadLetterReason, SendRequest, describe
from pipeline.sender.decode import Rejected, decode
from pipeline.topics import partition_for


class ConsumedRecord(Protocol):
    """What the sender reads from a fetched record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


@dataclass(frozen=True, slots=True)
class Rules:
    """What intake checks a request against."""

    default_number: str | None = None  # WHATSAPP_PHONE_NUMBER_ID, for requests without phone_number_id
    content: ContentPolicy | None = None  # the API's forbidden-content rule, for records produced straight to Kafka


@dataclass(frozen=True, slots=True)
class Dispatch:
    request: SendRequest
    number: str
    ttl: float | None  # seconds left until expires_at (> 0), or None: no expiry


@dataclass(frozen=True, slots=True)
class Expired:
    request: SendRequest
    number: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    rejected: Rejected
    request: SendRequest | None = None  # None: the record did not decode


@dataclass(frozen=True, slots=True)
class Reroute:
    request: SendRequest  # with phone_number_id filled in
    number: str
    home: int  # the partition that owns the number


Decision = Dispatch | Expired | DeadLetter | Reroute


def decide(record: ConsumedRecord, rules: Rules, *, partitions: int, wall: float) -> Decision:
    """Decode and route one record (pure: see the module's contract).

    `partitions`: of send.requests (a number's home is `partition_for(number, partitions)`);
    `wall`: the epoch time now, against which `expires_at` is measured.
    """
    decoded = decode(record.value)
    if isinstance(decoded, Rejected):
        return DeadLetter(decoded)
    request = decoded
    if "request_id" not in request.model_fields_set:
        derived = f"{record.topic}:{record.partition}:{record.offset}"[-64:]
        request = request.model_copy(update={"request_id": derived})
    if rules.content and (forbidden := rules.content.violations(request.message.model_dump(mode="json"))):
        return DeadLetter(Rejected(DeadLetterReason.SCHEMA_INVALID, describe(forbidden), request.request_id), request)
    number = request.phone_number_id or rules.default_number
    if number is None:
        return DeadLetter(Rejected(
            DeadLetterReason.SCHEMA_INVALID,
            "phone_number_id: missing, and no default (WHATSAPP_PHONE_NUMBER_ID) is configured",
            request.request_id,
        ), request)
    home = partition_for(number.encode(), partitions)
    if home != record.partition:
        return Reroute(request.model_copy(update={"phone_number_id": number}), number, home)
    if request.expires_at is None:
        return Dispatch(request, number, None)
    ttl = request.expires_at.timestamp() - wall
    return Dispatch(request, number, ttl) if ttl > 0 else Expired(request, number)
