"""A stage with nowhere to export records no spans, yet its spans carry trace ids and travel on the trace."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from pipeline.observability.tracing import IdsOnlyTracerProvider, configure_tracing, records_spans, unrecorded_child

PARENTS = [
    SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(0x01)),
    SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(0x03),
                TraceState([("vendor", "value")])),
    SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(0x00)),
]


@pytest.mark.parametrize("parent", PARENTS, ids=["sampled", "random-with-state", "unsampled"])
def test_a_child_span_continues_the_parents_trace_flags_and_state_with_an_id_of_its_own(parent: SpanContext) -> None:
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    span = IdsOnlyTracerProvider().get_tracer("t").start_span("process send.requests", context=context)
    child = span.get_span_context()
    assert not span.is_recording()
    assert (child.trace_id, child.trace_flags, child.trace_state) == (parent.trace_id, parent.trace_flags,
                                                                       parent.trace_state)
    assert child.is_valid
    assert not child.is_remote
    assert child.span_id != parent.span_id
    assert unrecorded_child(parent).get_span_context().span_id not in (child.span_id, parent.span_id)


def test_a_root_span_starts_an_unsampled_trace_of_its_own() -> None:
    tracer = IdsOnlyTracerProvider().get_tracer("t")
    first, second = tracer.start_span("send").get_span_context(), tracer.start_span("send").get_span_context()
    assert first.is_valid
    assert not first.trace_flags.sampled
    assert first.trace_id != second.trace_id


def test_start_as_current_span_nests_and_restores_the_current_span() -> None:
    tracer = IdsOnlyTracerProvider().get_tracer("t")
    with tracer.start_as_current_span("outer") as outer:
        assert trace.get_current_span() is outer
        with tracer.start_as_current_span("inner") as inner:
            assert trace.get_current_span() is inner
            assert inner.get_span_context().trace_id == outer.get_span_context().trace_id
            assert inner.get_span_context().span_id != outer.get_span_context().span_id
        assert trace.get_current_span() is outer
    assert not trace.get_current_span().get_span_context().is_valid


def test_configure_tracing_records_only_with_somewhere_to_export(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    nowhere = configure_tracing("delivery-sender", "i-1")
    assert isinstance(nowhere, IdsOnlyTracerProvider)
    assert not records_spans(nowhere)
    assert nowhere.get_tracer("t").start_span("s").get_span_context().is_valid

    exporter = InMemorySpanExporter()
    recording = configure_tracing("delivery-sender", "i-1", exporter=exporter)
    assert records_spans(recording)
    recording.get_tracer("t").start_span("s").end()
    assert [span.name for span in exporter.get_finished_spans()] == ["s"]


def test_the_sdk_switched_off_gives_spans_without_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    span = configure_tracing("delivery-sender", "i-1").get_tracer("t").start_span("s")
    assert not span.get_span_context().is_valid
