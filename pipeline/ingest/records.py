"""Small helpers around Kafka records shared by the ingest's consumers: headers and dead letters.

    headers = header_map(record)                          # {"traceparent": "00-…", "received-at": "…"}
    raw = header(record, "traceparent")                   # b"00-…" or None
    out = outgoing_headers(traceparent, request_id="req_…", status="read")
"""

from __future__ import annotations

from typing import Any

from pipeline.contracts import DeadLetter, DeadLetterReason, Stage
from pipeline.contracts.dead_letters import build_dead_letter

JSON = b"application/json"


def header_map(record: Any) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or ()) if v is not None}


def header(record: Any, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def outgoing_headers(traceparent: bytes | None, request_id: str | None = None, **extra: str) -> list[tuple[str, bytes]]:
    """`content-type`, `traceparent`, `request-id` (when known) and `extra` (`source_offset` → `source-offset`)."""
    headers = [("content-type", JSON)]
    if traceparent:
        headers.append(("traceparent", traceparent))
    if request_id:
        headers.append(("request-id", request_id.encode()))
    headers.extend((name.replace("_", "-"), value.encode()) for name, value in extra.items())
    return headers


def messaging_attributes(record: Any, group: str) -> dict[str, str | int]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": group,
    }


def dead_letter(record: Any, reason: DeadLetterReason, error: str, request_id: str | None = None) -> DeadLetter:
    """Everything needed to replay `record` to its topic once the problem is fixed."""
    return build_dead_letter(
        Stage.INGEST, reason, error,
        topic=record.topic, partition=record.partition, offset=record.offset,
        key=record.key, value=record.value, headers=header_map(record), request_id=request_id,
    )
