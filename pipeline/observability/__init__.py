"""Logs, traces and metrics for every stage, set up by one call.

    telemetry = setup(Stage.SENDER, settings)
    log = get_logger(__name__)
    broker = KafkaBroker(..., middlewares=broker_middlewares(telemetry.tracer_provider, "sender"))

Business code never configures loggers, tracers or registries itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from pipeline.config import Settings
from pipeline.contracts.vocabulary import Stage
from pipeline.observability.context import attached, capture, current_traceparent
from pipeline.observability.http import ops_routes, serve_ops
from pipeline.observability.kafka import broker_middlewares
from pipeline.observability.logs import configure_logging, get_logger
from pipeline.observability.redaction import mask_phone, redact
from pipeline.observability.tracing import configure_tracing, instrument_httpx


@dataclass(frozen=True)
class Telemetry:
    stage: Stage
    tracer_provider: TracerProvider


def setup(stage: Stage, settings: Settings, span_exporter: SpanExporter | None = None) -> Telemetry:
    """Configure JSON logs, the tracer provider (OTLP if configured) and httpx instrumentation."""
    configure_logging(stage.value, settings.log.instance, settings.log.level)
    provider = configure_tracing(f"delivery-{stage.value}", settings.log.instance, span_exporter)
    instrument_httpx(provider)
    return Telemetry(stage=stage, tracer_provider=provider)


__all__ = [
    "Telemetry",
    "attached",
    "broker_middlewares",
    "capture",
    "current_traceparent",
    "get_logger",
    "mask_phone",
    "ops_routes",
    "redact",
    "serve_ops",
    "setup",
]
