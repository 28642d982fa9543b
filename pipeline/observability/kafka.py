"""Observability for every FastStream Kafka broker: traces and metrics as middleware.

    broker = new_broker(settings.kafka, telemetry.tracer_provider, "ingest", graceful_timeout=10.0)
    broker = KafkaBroker(..., middlewares=broker_middlewares(telemetry.tracer_provider, "sender"))   # the same, by hand

Metrics: FastStream's `faststream_*` family in the shared registry (`kafka_metrics`). Traces: a stage
that exports spans gets FastStream's telemetry middleware — `create {topic}` and `send {topic}`
(PRODUCER) when publishing, `process {topic}` (CONSUMER) around the handler, names set by
`tracing.ConventionsSpanProcessor` — joined through the W3C `traceparent` Kafka header. A stage that
exports none only carries the trace context: ids in headers, logs and exemplars, spans never recorded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Self

from faststream import BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.opentelemetry.provider import (
    BatchKafkaTelemetrySettingsProvider,
    KafkaTelemetrySettingsProvider,
)
from faststream.message import SourceType
from faststream.opentelemetry.middleware import TelemetryMiddleware
from faststream.response import PublishType
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from pipeline.config import KafkaSettings
from pipeline.kafka_client import broker_options
from pipeline.observability.context import format_traceparent, parse_traceparent
from pipeline.observability.kafka_metrics import KafkaMetrics, kafka_metrics
from pipeline.observability.metrics import registry
from pipeline.observability.redaction import mask_phone
from pipeline.observability.tracing import messaging_attributes, records_spans, unrecorded_child
from pipeline.topics import TopicName

_W3C = TraceContextTextMapPropagator()
_KEY = "messaging.kafka.message.key"
# Topics keyed by a person's phone number: the key must not reach spans unmasked.
_PERSONAL_KEY_TOPICS = (TopicName.INBOUND_MESSAGES.value,)


def _mask_personal_key(attrs: dict[str, Any], topic: str) -> None:
    key = attrs.get(_KEY)
    if key is None:
        return
    # Keys are bytes on the wire; trace backends show text.
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    attrs[_KEY] = mask_phone(text) if topic.endswith(_PERSONAL_KEY_TOPICS) else text


def _stable_consume_attrs(attrs: dict[str, Any], record: Any, msg: Any) -> None:
    # FastStream reports the older attribute names; add today's. aiokafka keeps the group only as a
    # private attribute of the consumer; nothing public has it.
    group = getattr(getattr(msg, "consumer", None), "_group_id", None)
    attrs.update(messaging_attributes(record.topic, record.partition, group=group if isinstance(group, str) else None))
    _mask_personal_key(attrs, record.topic)


class _SpanAttributes(KafkaTelemetrySettingsProvider):
    def get_consume_attrs_from_message(self, msg: Any) -> dict[str, Any]:
        attrs = super().get_consume_attrs_from_message(msg)
        _stable_consume_attrs(attrs, msg.raw_message, msg)
        attrs["messaging.kafka.offset"] = msg.raw_message.offset
        return attrs

    def get_publish_attrs_from_cmd(self, cmd: Any) -> dict[str, Any]:
        attrs = super().get_publish_attrs_from_cmd(cmd)
        if cmd.partition is not None:
            attrs["messaging.destination.partition.id"] = str(cmd.partition)
        _mask_personal_key(attrs, cmd.destination)
        return attrs


class _BatchSpanAttributes(BatchKafkaTelemetrySettingsProvider):
    def get_consume_attrs_from_message(self, msg: Any) -> dict[str, Any]:
        attrs = super().get_consume_attrs_from_message(msg)
        _stable_consume_attrs(attrs, msg.raw_message[0], msg)
        return attrs

    def get_publish_attrs_from_cmd(self, cmd: Any) -> dict[str, Any]:
        attrs = super().get_publish_attrs_from_cmd(cmd)
        _mask_personal_key(attrs, cmd.destination)
        return attrs


def _attributes_provider(msg: Any) -> KafkaTelemetrySettingsProvider | BatchKafkaTelemetrySettingsProvider:
    # Mirrors faststream's own factory: a tuple of records is a batch.
    if isinstance(msg, Sequence):
        return _BatchSpanAttributes()
    return _SpanAttributes()


class PipelineKafkaTelemetryMiddleware(KafkaTelemetryMiddleware):
    """FastStream's Kafka telemetry with current attribute names and phone-number keys masked."""

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        # Skip KafkaTelemetryMiddleware.__init__: it fixes the attribute provider, which is all we change.
        TelemetryMiddleware.__init__(
            self,
            settings_provider_factory=_attributes_provider,
            tracer_provider=tracer_provider,
            include_messages_counters=False,  # counts come from the Prometheus middleware
        )


class KafkaObservabilityMiddleware:
    """Kafka metrics (`faststream_*`, see `kafka_metrics`) and, unless FastStream's telemetry
    middleware records spans, W3C trace context through Kafka headers with spans never recorded.

    FastStream asks this factory for a middleware per message and per publish; it hands out one
    stateless scope. Trace context and metrics share it because FastStream's per-middleware machinery
    (an exit-stack entry and awaits per message) cost as much as either's own work
    (bench/observability_overhead.py). FastStream's telemetry middleware, used when spans are
    exported, computes attributes, baggage and two or three spans per message even when nothing
    records them: several times the CPU of the context-only path here, hand-written for that reason.
    """

    def __init__(self, *, app_name: str, registry: CollectorRegistry, propagate_context: bool = True) -> None:
        scope = _ContextScope if propagate_context else _MetricsScope
        self._scope = scope(kafka_metrics(registry), app_name)

    def __call__(self, msg: Any, /, *, context: Any) -> BaseMiddleware:
        # The scope keeps no per-message state (everything lives in its methods' frames), so one
        # instance serves every message and publish, concurrent ones included.
        return self._scope


class _MetricsScope(BaseMiddleware):
    __slots__ = ("_app_name", "_metrics")

    def __init__(self, metrics: KafkaMetrics, app_name: str) -> None:
        # No BaseMiddleware.__init__: its `msg` and `context` are per-message state this never reads.
        self._metrics = metrics
        self._app_name = app_name

    # BaseMiddleware's enter and exit await two no-op hooks per message.
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> bool:
        return False

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        if msg.source_type is SourceType.RESPONSE:
            return await call_next(msg)
        with self._metrics.processing(self._app_name, msg):
            return await call_next(msg)

    async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
        if cmd.publish_type is PublishType.REPLY:
            return await call_next(cmd)
        with self._metrics.publishing(self._app_name, cmd):
            return await call_next(cmd)


class _ContextScope(_MetricsScope):
    __slots__ = ()

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        token = otel_context.attach(trace.set_span_in_context(_consumer_span(msg.headers)))
        try:
            if msg.source_type is SourceType.RESPONSE:
                return await call_next(msg)
            with self._metrics.processing(self._app_name, msg):
                return await call_next(msg)
        finally:
            otel_context.detach(token)

    async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
        parent = trace.get_current_span().get_span_context()
        if not parent.is_valid:
            # A publish outside any trace starts one, as FastStream's "create" span would.
            parent = unrecorded_child(None).get_span_context()
        if parent.trace_state:
            _W3C.inject(cmd.headers, context=trace.set_span_in_context(trace.NonRecordingSpan(parent)))
        else:
            cmd.headers["traceparent"] = format_traceparent(parent)
        if cmd.publish_type is PublishType.REPLY:
            return await call_next(cmd)
        with self._metrics.publishing(self._app_name, cmd):
            return await call_next(cmd)


def _consumer_span(headers: Mapping[str, Any]) -> trace.Span:
    """An unrecorded child of the record's `traceparent` (the fast parse, a fifth of the propagator's
    cost, for the version-00 form every SDK sends; the propagator for anything with a tracestate)."""
    header = headers.get("traceparent")
    if header is None:
        return unrecorded_child(None)
    parent = parse_traceparent(header) if "tracestate" not in headers else None
    if parent is None:
        parent = trace.get_current_span(_W3C.extract(headers)).get_span_context()
    return unrecorded_child(parent)


def new_broker(
    kafka: KafkaSettings, tracer_provider: TracerProvider, app_name: str, *, observed: bool = True, **options: Any
) -> KafkaBroker:
    """A FastStream broker for a consumer stage: connection and security from the settings, the
    middlewares of `broker_middlewares`; `options` go to `KafkaBroker` (graceful_timeout, …).

    `observed=False` (benchmarks only): no middlewares and FastStream's logger off.
    """
    options.setdefault("allow_auto_create_topics", False)  # the catalog creates them, with their configs
    options.setdefault("description", "the pipeline's Kafka cluster")
    if not observed:
        options["logger"] = None
    return KafkaBroker(
        **broker_options(kafka),  # servers, client id, TLS and SASL: the one Kafka client factory
        middlewares=broker_middlewares(tracer_provider, app_name) if observed else (),
        **options,
    )


def broker_middlewares(tracer_provider: TracerProvider, app_name: str) -> Sequence[Any]:
    """What every FastStream broker of a stage gets: metrics, and traces as the provider records them.

    With spans recorded, FastStream's telemetry middleware comes first (outermost), so the metrics and
    the handler run inside its span.
    """
    if records_spans(tracer_provider):
        return (
            PipelineKafkaTelemetryMiddleware(tracer_provider=tracer_provider),
            KafkaObservabilityMiddleware(app_name=app_name, registry=registry, propagate_context=False),
        )
    return (KafkaObservabilityMiddleware(app_name=app_name, registry=registry),)
