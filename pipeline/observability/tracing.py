"""OpenTelemetry tracing from the standard `OTEL_*` environment variables.

With no exporter endpoint configured, spans are still created (trace ids reach logs and exemplars)
but nothing is exported.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def configure_tracing(service_name: str, instance: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Build the stage's provider and make it global (FastStream and httpx instrumentation use it).

    `exporter` is for tests (an in-memory exporter, processed synchronously).
    """
    resource = Resource.create(
        {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name), SERVICE_INSTANCE_ID: instance}
    )
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif any(os.environ.get(var) for var in _ENDPOINT_VARS) and os.environ.get("OTEL_TRACES_EXPORTER") != "none":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _set_global(provider)
    return provider


def _set_global(provider: TracerProvider) -> None:
    # The API refuses to replace a global provider; tests and `pipeline run` may configure twice.
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace.set_tracer_provider(provider)


def instrument_httpx(provider: TracerProvider) -> None:
    """Client spans for every httpx request (the Graph API calls)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
