"""OpenTelemetry tracing from the standard `OTEL_*` environment variables.

    provider = configure_tracing("delivery-sender", instance)    # done by `setup()`
    instrument_httpx(provider)                                    # client spans for httpx's own transports

With no exporter endpoint configured, spans are not recorded but still carry ids (trace ids reach
logs, exemplars and Kafka headers) and nothing is exported. Each stage gets its own provider (its
own `service.name`); the process-wide provider that libraries find through `trace.get_tracer()`
hands each span to the provider of the stage whose task started it, so one process may host
several stages (tests, `pipeline run`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.util.types import Attributes

from pipeline.observability.redaction import scrub_query, scrub_url
from pipeline.observability.stage import current_stage

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
FASTSTREAM_SCOPE = "opentelemetry.instrumentation.faststream"
# FastStream names spans "{topic} {action}" (messaging conventions before 1.24); the project's and
# today's conventions put the operation first: "send {topic}", "process {topic}", "create {topic}".
_FASTSTREAM_OPERATIONS = {"publish": "send", "process": "process", "create": "create", "receive": "receive"}
# Attributes that may carry a URL or query with a secret parameter (hub.verify_token=…).
_URL_ATTRIBUTES = ("http.url", "http.target", "url.full")
_QUERY_ATTRIBUTES = ("url.query",)
_REDACTED_ATTRIBUTES = frozenset(_URL_ATTRIBUTES + _QUERY_ATTRIBUTES)


class ConventionsSpanProcessor(SpanProcessor):
    """Renames FastStream's Kafka spans to the conventions and redacts secrets in URL attributes.

    Runs at span start, while the span is still writable; exporters see the result.
    """

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        scope = span.instrumentation_scope
        if scope is not None and scope.name == FASTSTREAM_SCOPE:
            destination, _, action = span.name.rpartition(" ")
            operation = _FASTSTREAM_OPERATIONS.get(action)
            if destination and operation:
                span.update_name(f"{operation} {destination}")
                span.set_attribute("messaging.operation.name", operation)
            return
        attributes = span.attributes
        if not attributes:
            return
        # Every span passes here (the Graph client's, per call): look only at the keys it has.
        for key in _REDACTED_ATTRIBUTES.intersection(attributes):
            value = attributes[key]
            if not isinstance(value, str):
                continue
            if key in _QUERY_ATTRIBUTES:
                if value:
                    span.set_attribute(key, scrub_query(value))
            elif "?" in value:
                span.set_attribute(key, scrub_url(value))

    def on_end(self, span: ReadableSpan) -> None:
        pass


def configure_tracing(service_name: str, instance: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Build a stage's provider and make the process-wide provider route to it.

    `exporter` is for tests (an in-memory exporter, processed synchronously). Otherwise spans go to
    OTLP/HTTP when `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set, and nowhere when it is not.
    """
    resource = Resource.create(
        {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name), SERVICE_INSTANCE_ID: instance}
    )
    exporting = exporter is not None or (
        any(os.environ.get(var) for var in _ENDPOINT_VARS) and os.environ.get("OTEL_TRACES_EXPORTER") != "none"
    )
    # Nothing to export to: spans are not recorded (`unrecorded_child`: a few µs each) but
    # still get trace and span ids, which propagate in headers and reach logs and exemplars.
    # Otherwise the sampler comes from OTEL_TRACES_SAMPLER(_ARG), default parent-based always-on.
    provider = TracerProvider(resource=resource) if exporting else IdsOnlyTracerProvider(resource=resource)
    provider.add_span_processor(ConventionsSpanProcessor())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


_IDS = RandomIdGenerator()
_NEW_TRACE = trace.TraceFlags(trace.TraceFlags.DEFAULT)


def unrecorded_child(parent: trace.SpanContext | None) -> trace.Span:
    """A span that records nothing: the parent's trace, flags and trace state, and a span id of its own.

        span = unrecorded_child(parse_traceparent(header))   # continue a record's trace, unrecorded
        unrecorded_child(None)                                # or start one

    The parent's sampling decision travels on unchanged (an SDK tracer with an always-off sampler would
    clear it): a stage that records nothing does not decide for the stages after it that do.
    """
    if parent is not None and parent.is_valid:
        trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
    else:
        trace_id, flags, state = _IDS.generate_trace_id(), _NEW_TRACE, None
    return trace.NonRecordingSpan(trace.SpanContext(trace_id, _IDS.generate_span_id(), False, flags, state))


class IdsOnlyTracerProvider(TracerProvider):
    """The provider of a stage with nowhere to export: every span is an `unrecorded_child`.

        span = IdsOnlyTracerProvider().get_tracer("x").start_span("process send.requests", context=parent)
        span.get_span_context().trace_id    # the parent's trace, a fresh span id, nothing recorded

    The SDK's tracer with an always-off sampler makes nearly the same span through its general path
    (sampler call, parent trace-state lookup, its own span metrics): 5.4 µs a span against 2.3 to 3.6 µs
    here, measured in one loop; the sender starts three a message, the other stages one or two.
    """

    def __init__(self, resource: Resource | None = None) -> None:
        super().__init__(resource=resource, sampler=ALWAYS_OFF)

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        if self._disabled:  # OTEL_SDK_DISABLED: the SDK's no-op tracer, spans without ids
            return super().get_tracer(*args, **kwargs)
        return _UNRECORDED


class _UnrecordedTracer(trace.Tracer):
    # Nothing but the parent is read: kind, attributes, links and the rest are for recorded spans.
    def start_span(self, name: str, context: Context | None = None, *_: Any, **__: Any) -> trace.Span:
        return unrecorded_child(trace.get_current_span(context).get_span_context())

    # The API types this with its private `_AgnosticContextManager`; a plain context manager does the same.
    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: Context | None = None, *_: Any, end_on_exit: bool = True, **__: Any
    ) -> Iterator[trace.Span]:
        with trace.use_span(self.start_span(name, context), end_on_exit=end_on_exit) as span:
            yield span


_UNRECORDED = _UnrecordedTracer()


def records_spans(provider: TracerProvider) -> bool:
    """False for a provider built without an exporter: its spans carry ids and nothing else."""
    return provider.sampler is not ALWAYS_OFF


# --- the process-wide provider --------------------------------------------------------------------

_stage_providers: dict[str, TracerProvider] = {}
_last_provider: list[TracerProvider] = []


def register_stage_provider(stage: str, provider: TracerProvider) -> None:
    """Make `provider` the one that spans started in `stage`'s tasks go to (see `StageTracerProvider`)."""
    _stage_providers[stage] = provider
    _last_provider[:] = [provider]
    _install_router()


def provider_for_current_stage() -> trace.TracerProvider:
    stage = current_stage()
    provider = _stage_providers.get(stage) if stage else None
    if provider is not None:
        return provider
    return _last_provider[0] if _last_provider else trace.NoOpTracerProvider()


class _StageTracer(trace.Tracer):
    """A tracer that asks, at each span, which stage is running and uses that stage's provider."""

    def __init__(self, name: str, version: str | None, schema_url: str | None, attributes: Attributes) -> None:
        self._args = (name, version, schema_url, attributes)
        self._tracers: dict[trace.TracerProvider, trace.Tracer] = {}

    def _delegate(self) -> trace.Tracer:
        provider = provider_for_current_stage()
        tracer = self._tracers.get(provider)
        if tracer is None:
            name, version, schema_url, attributes = self._args
            tracer = self._tracers[provider] = provider.get_tracer(name, version, schema_url, attributes)
        return tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._delegate().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate().start_as_current_span(*args, **kwargs)


class StageTracerProvider(trace.TracerProvider):
    """The global provider: libraries instrumented once (httpx) still report to the right stage."""

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        return _StageTracer(instrumenting_module_name, instrumenting_library_version, schema_url, attributes)


_ROUTER = StageTracerProvider()


def _install_router() -> None:
    if trace.get_tracer_provider() is _ROUTER:
        return
    # The API refuses to replace a global provider once set; ours must win over an earlier one
    # (a library or test that set its own), because every stage's spans depend on it.
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace.set_tracer_provider(_ROUTER)


# --- httpx ----------------------------------------------------------------------------------------


def instrument_httpx(provider: TracerProvider | None = None) -> None:
    """Client spans for every request through httpx's own transports (the Graph API calls).

    Instrumented once per process, against the stage-routing provider, and only once a stage records
    spans: for unrecorded spans the instrumentation would cost ~100 µs of CPU per request
    (bench/observability_overhead.py --handler http) to send a `traceparent` nobody reads.
    """
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if provider is not None and not records_spans(provider):
        return
    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=_ROUTER)


def messaging_attributes(
    topic: str, partition: int | None = None, offset: int | None = None, group: str | None = None,
    operation: str = "process",
) -> dict[str, str | int]:
    """Today's messaging attribute names for a Kafka span (the ones docs and dashboards use)."""
    attrs: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
    }
    if partition is not None:
        attrs["messaging.destination.partition.id"] = str(partition)
    if offset is not None:
        attrs["messaging.kafka.offset"] = offset
    if group:
        attrs["messaging.consumer.group.name"] = group
    return attrs
