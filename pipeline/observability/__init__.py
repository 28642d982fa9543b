"""Logs, traces and metrics for every stage, set up by one call.

    telemetry = setup(Stage.SENDER, settings)
    log = get_logger(__name__)
    broker = KafkaBroker(..., middlewares=broker_middlewares(telemetry.tracer_provider, "sender"))
    asyncio.create_task(track_lag(consumer, group)) # stages with a consumer: lag gauge

Business code never configures loggers, tracers or registries itself. docs/observability.md lists
every metric, log field and span.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from pipeline.config import Settings
from pipeline.contracts.vocabulary import Stage
from pipeline.observability.context import current_trace_id, current_traceparent
from pipeline.observability.http import OpsServer, ops_routes, uvicorn_config
from pipeline.observability.kafka import broker_middlewares, new_broker
from pipeline.observability.lag import subscriber_consumers, track_lag
from pipeline.observability.logs import configure_logging, get_logger
from pipeline.observability.redaction import mask_phone, redact, register_secrets
from pipeline.observability.stage import bind_stage
from pipeline.observability.tracing import (
    configure_tracing,
    instrument_httpx,
    register_stage_provider,
)


@dataclass(frozen=True)
class Telemetry:
    stage: Stage
    tracer_provider: TracerProvider

    def tracer(self, name: str) -> trace.Tracer:
        """For the rare span business code starts itself (a scheduler's wait, a batch)."""
        return self.tracer_provider.get_tracer(name)


# One Telemetry per stage and arguments: calling setup again with the same ones is free, so tests
# and a process hosting several stages can call it as often as they like.
_configured: dict[Stage, tuple[str, SpanExporter | None, Telemetry]] = {}


def setup(stage: Stage, settings: Settings, span_exporter: SpanExporter | None = None) -> Telemetry:
    """Configure JSON logs, the stage's tracer provider (OTLP if configured) and httpx instrumentation.

    Call first thing in the stage's task: log lines and spans of the tasks it starts carry `stage`.
    A second call with the same arguments returns the same Telemetry; with a different exporter or
    instance it replaces the stage's provider (brokers built earlier keep the provider they got).
    """
    register_secrets(settings)
    configure_logging(stage.value, settings.log.instance, settings.log.level)
    bind_stage(stage.value)
    instance = settings.log.instance
    previous = _configured.get(stage)
    if previous is not None and previous[0] == instance and previous[1] is span_exporter:
        telemetry = previous[2]
    else:
        provider = configure_tracing(f"delivery-{stage.value}", instance, span_exporter)
        telemetry = Telemetry(stage=stage, tracer_provider=provider)
        _configured[stage] = (instance, span_exporter, telemetry)
    register_stage_provider(stage.value, telemetry.tracer_provider)
    instrument_httpx(telemetry.tracer_provider)
    return telemetry


__all__ = [
    "OpsServer",
    "Telemetry",
    "broker_middlewares",
    "current_trace_id",
    "current_traceparent",
    "get_logger",
    "mask_phone",
    "new_broker",
    "ops_routes",
    "redact",
    "setup",
    "subscriber_consumers",
    "track_lag",
    "uvicorn_config",
]
