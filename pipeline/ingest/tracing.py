"""Trace context for the ingest's hot paths: W3C `traceparent` in and out without the propagator API.

    parent = parent_context(record_traceparent)        # Context for `start_as_current_span(context=…)`
    link = link_to(event.traceparent)                  # Link to the send's trace, or None
    header = traceparent_of(span)                      # "00-<trace>-<span>-01" for outgoing headers

Hand-written because the consumers handle thousands of records a second and the propagator route
(a carrier dict, a regex, context lookups, then `inject` through the current context) was the largest
single cost in their CPU profile; the W3C format itself is fixed (version 00, 55 characters).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, TraceFlags

_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2


def span_context_of(traceparent: str | bytes | None) -> SpanContext | None:
    """The remote span a `traceparent` names, or None when it is absent or not W3C version 00."""
    if not traceparent or len(traceparent) != _LENGTH:
        return None
    text = traceparent.decode("ascii", "replace") if isinstance(traceparent, bytes) else traceparent
    if text[:3] != "00-" or text[35] != "-" or text[52] != "-":
        return None
    try:
        trace_id, span_id, flags = int(text[3:35], 16), int(text[36:52], 16), int(text[53:55], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None  # all-zero ids are invalid by the spec
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def parent_context(traceparent: str | bytes | None) -> Context | None:
    span_context = span_context_of(traceparent)
    return trace.set_span_in_context(NonRecordingSpan(span_context)) if span_context else None


def link_to(traceparent: str | None) -> Link | None:
    """A link to the trace that sent the message (its traceparent came back through Meta)."""
    span_context = span_context_of(traceparent)
    return Link(span_context) if span_context else None


def traceparent_of(span: Span) -> bytes | None:
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}".encode()


def exemplar_of(span: Span) -> dict[str, str] | None:
    """`{"trace_id": …}` for a metric observed inside `span` (only sampled spans can be looked up)."""
    context = span.get_span_context()
    return {"trace_id": f"{context.trace_id:032x}"} if context.is_valid and context.trace_flags.sampled else None
