"""W3C trace context: the fast parse and format agree with the propagator, and work handed to another
long-lived task keeps the producer's trace only when its context is carried explicitly."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pipeline.config import Settings
from pipeline.contracts.vocabulary import Stage
from pipeline.observability import setup
from pipeline.observability.context import (
    context_from_headers,
    context_from_traceparent,
    current_trace_id,
    current_traceparent,
    exemplar_of,
    link_to,
    parse_traceparent,
    traceparent_header,
    traceparent_of,
)


async def test_traceparent_round_trips_through_text(settings: Settings) -> None:
    tracer = setup(Stage.SENDER, settings, span_exporter=InMemorySpanExporter()).tracer("test")
    assert current_traceparent() is None
    assert context_from_traceparent(None) is None
    with tracer.start_as_current_span("api request"):
        traceparent = current_traceparent()
        trace_id = current_trace_id()
    assert traceparent is not None
    assert trace_id is not None
    assert traceparent.split("-")[1] == trace_id

    # Minutes later, in the ingest: the status webhook's span joins the original trace.
    for ctx in (context_from_traceparent(traceparent), context_from_headers({"traceparent": traceparent})):
        with tracer.start_as_current_span("status webhook", context=ctx):
            assert current_trace_id() == trace_id
    with tracer.start_as_current_span("bad", context=context_from_traceparent("00-garbage")):
        assert current_trace_id() != trace_id  # a malformed header starts a new trace, it does not fail


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parses_like_the_w3c_propagator() -> None:
    ours = parse_traceparent(TRACEPARENT)
    theirs = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT}))
    assert ours == theirs.get_span_context()
    assert parse_traceparent(TRACEPARENT.encode()) == ours


@pytest.mark.parametrize(
    "bad",
    [
        None, "", "req_123", TRACEPARENT[:-1], "01" + TRACEPARENT[2:],
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    ],
)
def test_anything_else_is_no_context(bad: str | None) -> None:
    assert parse_traceparent(bad) is None
    assert context_from_traceparent(bad) is None
    assert link_to(bad) is None


def test_a_child_span_continues_the_trace_and_writes_a_traceparent() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("child", context=context_from_traceparent(TRACEPARENT)) as span:
        text, header = traceparent_of(span), traceparent_header(span)
        assert text is not None
        assert header == text.encode()
        assert text.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert current_traceparent() == text
        parsed = parse_traceparent(header)
        assert parsed is not None
        assert (parsed.trace_id, parsed.span_id) == (span.get_span_context().trace_id, span.get_span_context().span_id)
        assert exemplar_of(span) == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    assert traceparent_of(trace.INVALID_SPAN) is None
    assert traceparent_header(trace.INVALID_SPAN) is None
