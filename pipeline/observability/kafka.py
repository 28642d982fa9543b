"""Observability for every FastStream Kafka broker: traces and metrics as middleware.

    broker = KafkaBroker(..., middlewares=broker_middlewares(telemetry.tracer_provider, "sender"))

Spans (names set by `tracing.ConventionsSpanProcessor`): `create {topic}` and `send {topic}` (PRODUCER)
when publishing, `process {topic}` (CONSUMER) around the handler, joined through the W3C
`traceparent` Kafka header. Metrics: FastStream's `faststream_*` family in the shared registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.opentelemetry.provider import (
    BatchKafkaTelemetrySettingsProvider,
    KafkaTelemetrySettingsProvider,
)
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.opentelemetry.middleware import TelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider

from pipeline.observability.metrics import registry
from pipeline.observability.redaction import mask_phone
from pipeline.topics import TopicName

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
    if group:
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


def broker_middlewares(tracer_provider: TracerProvider, app_name: str) -> Sequence[Any]:
    """Tracing first (outermost), so the Prometheus middleware and the handler run inside the span."""
    return (
        PipelineKafkaTelemetryMiddleware(tracer_provider=tracer_provider),
        KafkaPrometheusMiddleware(registry=registry, app_name=app_name, metrics_prefix="faststream"),
    )
