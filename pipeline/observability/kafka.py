"""Observability for every FastStream Kafka broker: traces and metrics as middleware.

    broker = KafkaBroker(..., middlewares=broker_middlewares(telemetry.tracer_provider, "sender"))

Spans (names set by `tracing.ConventionsSpanProcessor`): `create {topic}` and `send {topic}` (PRODUCER)
when publishing, `process {topic}` (CONSUMER) around the handler, joined through the W3C
`traceparent` Kafka header. A stage that exports no spans only carries the trace context (ids in
headers, logs and exemplars; see `TraceContextMiddleware`). Metrics: FastStream's `faststream_*`
family in the shared registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faststream import BaseMiddleware
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.opentelemetry.provider import (
    BatchKafkaTelemetrySettingsProvider,
    KafkaTelemetrySettingsProvider,
)
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.opentelemetry.middleware import TelemetryMiddleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from pipeline.observability.metrics import registry
from pipeline.observability.redaction import mask_phone
from pipeline.observability.tracing import records_spans
from pipeline.topics import TopicName

_W3C = TraceContextTextMapPropagator()
_ids = RandomIdGenerator()
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
    # FastStream reports the older attribute names; add today's, which the docs and dashboards use.
    attrs["messaging.destination.name"] = record.topic
    attrs["messaging.destination.partition.id"] = str(record.partition)
    # aiokafka keeps the group only as a private attribute of the consumer; nothing public has it.
    group = getattr(getattr(msg, "consumer", None), "_group_id", None)
    if isinstance(group, str) and group:
        attrs["messaging.consumer.group.name"] = group
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


class TraceContextMiddleware(BaseMiddleware):
    """W3C trace context through Kafka headers, with spans that are never recorded: the tracing of a
    stage that exports no spans.

    FastStream's telemetry middleware computes attributes, metrics, baggage and two or three spans
    per message even when nothing records them, several times the CPU of this
    (bench/observability_overhead.py). Hand-written for that reason; with an exporter configured,
    `broker_middlewares` uses FastStream's middleware instead.
    """

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        parent = _W3C.extract(msg.headers)
        span = _unrecorded_child(trace.get_current_span(parent).get_span_context())
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            return await call_next(msg)
        finally:
            otel_context.detach(token)

    async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
        current = otel_context.get_current()
        if not trace.get_current_span(current).get_span_context().is_valid:
            # A publish outside any trace starts one, as FastStream's "create" span would.
            current = trace.set_span_in_context(_unrecorded_child(None), current)
        _W3C.inject(cmd.headers, context=current)
        return await call_next(cmd)


def _unrecorded_child(parent: trace.SpanContext | None) -> trace.Span:
    """What an SDK tracer with an always-off sampler returns, without the sampler's cost."""
    if parent is not None and parent.is_valid:
        trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
    else:
        trace_id, flags, state = _ids.generate_trace_id(), trace.TraceFlags(trace.TraceFlags.DEFAULT), None
    span_context = trace.SpanContext(trace_id, _ids.generate_span_id(), False, flags, state)
    return trace.NonRecordingSpan(span_context)


class _CachedChildren:
    """A metric whose `labels(**values)` remembers each child: the values a broker passes come from a
    handful of topics and statuses, and prometheus_client validates and locks on every call."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[Any, ...], Any] = {}

    def labels(self, **values: Any) -> Any:
        key = tuple(values.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(**values)
        return child


class PipelinePrometheusMiddleware(KafkaPrometheusMiddleware):
    """FastStream's Prometheus middleware, same `faststream_*` metrics, label children cached.

    FastStream looks up 5-8 label children per message through prometheus_client's validating
    `labels()`; caching them roughly halves the middleware's cost (bench/observability_overhead.py).
    """

    def __init__(self, *, registry: CollectorRegistry, app_name: str, metrics_prefix: str = "faststream") -> None:
        super().__init__(registry=registry, app_name=app_name, metrics_prefix=metrics_prefix)
        container = self._metrics_container
        for name in _FASTSTREAM_METRICS:
            metric = getattr(container, name, None)
            if metric is not None:  # a FastStream that renamed one keeps working, just uncached
                setattr(container, name, _CachedChildren(metric))


_FASTSTREAM_METRICS = (
    "received_messages_total",
    "received_messages_size_bytes",
    "received_messages_in_process",
    "received_processed_messages_total",
    "received_processed_messages_duration_seconds",
    "received_processed_messages_exceptions_total",
    "published_messages_total",
    "published_messages_duration_seconds",
    "published_messages_exceptions_total",
)


def broker_middlewares(tracer_provider: TracerProvider, app_name: str) -> Sequence[Any]:
    """Tracing first (outermost), so the Prometheus middleware and the handler run inside the span."""
    tracing: Any = TraceContextMiddleware
    if records_spans(tracer_provider):
        tracing = PipelineKafkaTelemetryMiddleware(tracer_provider=tracer_provider)
    return (
        tracing,
        PipelinePrometheusMiddleware(registry=registry, app_name=app_name, metrics_prefix="faststream"),
    )
