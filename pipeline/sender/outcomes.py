"""Where outcomes go: `send.results`, `dead-letters`, or back to `send.requests` with the right key.

    sink = KafkaSink(producer, tracer)          # idempotent producer, acks=all
    await sink.publish(topic, key, value, headers, context=work.context, source_partition=0)   # once acknowledged
    result_record(work, Terminal(MessageOutcome.SENT), wamid="wamid.X")   # -> bytes of a SendResult
    dead_letter_record(origin, reason, error, request_id)                 # -> bytes of a DeadLetter

`publish` returns only when the broker has the record (acks=all), and the engine marks the
request's offset done only after that: an outcome is durable before its offset can be committed.
`source_partition` is the input partition the record comes from: the transactional sink (commits.py)
publishes it in that partition's transaction; the plain one ignores it. Every publish is a PRODUCER
span `send {topic}` in the request's trace, and carries `traceparent` in its headers so the next
consumer continues the same trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Tracer

from pipeline.contracts import DeadLetterReason, MessageOutcome, SendResult, Stage, utcnow
from pipeline.contracts.dead_letters import build_dead_letter
from pipeline.observability.context import traceparent_header
from pipeline.observability.tracing import messaging_attributes
from pipeline.sender.work import Origin, Work

Headers = Sequence[tuple[str, bytes]]


class Sink(Protocol):
    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers, *, context: Context | None = None,
        source_partition: int | None = None,
    ) -> None: ...


class KafkaSink:
    def __init__(self, producer: AIOKafkaProducer | None, tracer: Tracer | None = None) -> None:
        self._producer = producer
        self._tracer = tracer or trace.get_tracer("pipeline.sender")

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers, *, context: Context | None = None,
        source_partition: int | None = None,
    ) -> None:
        assert self._producer is not None
        await self._send(self._producer, topic, key, value, headers, context)

    async def _send(
        self, producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes, headers: Headers,
        context: Context | None,
    ) -> None:
        span = self._tracer.start_span(
            f"send {topic}",
            context=context,
            kind=SpanKind.PRODUCER,
            attributes=messaging_attributes(topic, operation="send"),
        )
        try:
            out = [(k, v) for k, v in headers if k != "traceparent"]
            header = traceparent_header(span)
            if header is not None:
                out.append(("traceparent", header))
            future = await producer.send(topic, value, key=key, headers=out)
            metadata = await future
            span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
            span.set_attribute("messaging.kafka.offset", metadata.offset)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR)
            raise
        finally:
            span.end()


def result_record(work: Work, outcome: MessageOutcome, *, wamid: str | None = None) -> bytes:
    request = work.request
    # model_construct: every field comes from an already-validated request or from this process, and
    # validating them again was a measurable share of the sender's CPU per message.
    result = SendResult.model_construct(
        request_id=request.request_id,
        phone_number_id=work.number,
        to=request.to,
        recipient_user_id=request.recipient_user_id,
        outcome=outcome,
        wamid=wamid,
        error=work.last_error if outcome is not MessageOutcome.SENT else None,
        attempts=work.attempts,
        ambiguous_attempts=work.ambiguous_attempts,
        accepted_at=request.accepted_at,
        completed_at=utcnow(),
        traceparent=work.traceparent,
        metadata=request.metadata,
    )
    return result.model_dump_json(exclude_none=True).encode()


def dead_letter_record(origin: Origin, reason: DeadLetterReason, error: str, request_id: str | None) -> bytes:
    letter = build_dead_letter(
        Stage.SENDER, reason, error,
        topic=origin.topic, partition=origin.partition, offset=origin.offset,
        key=origin.key, value=origin.value,
        headers={k: v.decode("utf-8", "replace") for k, v in origin.headers},
        request_id=request_id,
    )
    return letter.model_dump_json().encode()
