"""Observability for every FastStream Kafka broker: traces and metrics as middleware.

    broker = KafkaBroker(..., middlewares=broker_middlewares(telemetry))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry.sdk.trace import TracerProvider

from pipeline.observability.metrics import registry


def broker_middlewares(tracer_provider: TracerProvider, app_name: str) -> Sequence[Any]:
    return (
        KafkaTelemetryMiddleware(tracer_provider=tracer_provider),
        KafkaPrometheusMiddleware(registry=registry, app_name=app_name, metrics_prefix="faststream"),
    )
