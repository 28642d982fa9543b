"""Small helpers around Kafka records shared by the ingest's consumers: headers, links, dead letters.

    headers = header_map(record)                   # {"traceparent": "00-…", "received-at": "…"}
    out = outgoing_headers(request_id="req_…")     # traceparent of the current span + content type
    link = link_to(event.traceparent)              # span link to the original send's trace
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link

from pipeline.contracts import DeadLetter, DeadLetterReason, Stage
from pipeline.observability.context import context_from_traceparent, current_traceparent

JSON = b"application/json"
_MAX_ERROR = 4096  # DeadLetter.error's limit


def header_map(record: Any) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or ()) if v is not None}


def outgoing_headers(request_id: str | None = None, **extra: str) -> list[tuple[str, bytes]]:
    headers = [("content-type", JSON)]
    traceparent = current_traceparent()
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    if request_id:
        headers.append(("request-id", request_id.encode()))
    headers.extend((name.replace("_", "-"), value.encode()) for name, value in extra.items())
    return headers


def link_to(traceparent: str | None) -> Link | None:
    """A link to the trace that sent the message (its traceparent came back through Meta)."""
    context = context_from_traceparent(traceparent)
    if context is None:
        return None
    span_context = trace.get_current_span(context).get_span_context()
    return Link(span_context) if span_context.is_valid else None


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
    return DeadLetter(
        stage=Stage.INGEST,
        reason=reason,
        error=error if len(error) <= _MAX_ERROR else error[: _MAX_ERROR - 1] + "…",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key_b64=DeadLetter.encode(record.key),
        value_b64=DeadLetter.encode(record.value) or "",
        headers=header_map(record),
        request_id=request_id,
    )
