"""W3C traceparent in and out of the ingest's hot paths, without the propagator API."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pipeline.ingest.tracing import exemplar_of, link_to, parent_context, span_context_of, traceparent_of

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parses_like_the_w3c_propagator() -> None:
    ours = span_context_of(TRACEPARENT)
    theirs = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT}))
    assert ours == theirs.get_span_context()
    assert span_context_of(TRACEPARENT.encode()) == ours


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
    assert span_context_of(bad) is None
    assert parent_context(bad) is None
    assert link_to(bad) is None


def test_a_child_span_continues_the_trace_and_writes_a_traceparent() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("child", context=parent_context(TRACEPARENT)) as span:
        header = traceparent_of(span)
        assert header is not None
        assert header.decode().split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
        parsed = span_context_of(header)
        assert parsed is not None
        assert (parsed.trace_id, parsed.span_id) == (span.get_span_context().trace_id, span.get_span_context().span_id)
        assert exemplar_of(span) == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    assert traceparent_of(trace.INVALID_SPAN) is None
