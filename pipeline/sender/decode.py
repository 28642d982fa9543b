"""Bytes from `send.requests` → a `SendRequest`, or the reason it cannot be one.

    decoded = decode(record.value)           # SendRequest | Rejected(reason, error, request_id)

A record that does not decode is dead-lettered with the reason (`invalid_json`,
`schema_invalid`) and the raw bytes, and its offset completes like any other: one poison message
never stops a partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from pipeline.contracts import DeadLetterReason, SendRequest, describe, field_errors

_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # RequestId's rule (pipeline/contracts/messages.py)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: DeadLetterReason
    error: str
    request_id: str | None = None


def decode(value: bytes | None) -> SendRequest | Rejected:
    if value is None:
        return Rejected(DeadLetterReason.INVALID_JSON, "record has no value (a tombstone?)")
    try:
        return SendRequest.model_validate_json(value)
    except ValidationError as exc:
        return _rejected(value, exc)


def _rejected(value: bytes, exc: ValidationError) -> Rejected:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as err:
        return Rejected(DeadLetterReason.INVALID_JSON, f"not JSON: {err}")
    if not isinstance(data, dict):
        return Rejected(DeadLetterReason.SCHEMA_INVALID, f"a SendRequest is a JSON object; got {type(data).__name__}")
    request_id = data.get("request_id")
    return Rejected(
        DeadLetterReason.SCHEMA_INVALID,
        describe(field_errors(exc, data))[:4000],
        # Only a well-formed id is kept: it becomes a header of the dead letter, and a hostile 900 KB one
        # would make the dead letter itself too large to publish (issue 13, finding 2).
        request_id if isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id) else None,
    )
