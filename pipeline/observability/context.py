"""W3C trace context for every stage: fast `traceparent` format and parse.

    span_context = parse_traceparent(b"00-4bf9…-00f0…-01")   # SpanContext (remote) or None
    parent = context_from_traceparent(header)                 # Context for `start_as_current_span(context=…)`
    link = link_to(event.traceparent)                         # Link to the send's trace, or None
    text = traceparent_of(span)                               # "00-<trace>-<span>-01", or None
    header = traceparent_header(span)                         # the same as bytes, for Kafka headers
    current_traceparent()                                     # the same for the current span

Hand-written rather than through the propagator API: the consumers handle thousands of records a
second and the propagator route (a carrier dict, a regex, context lookups, then `inject` through the
current context) was the largest single cost in their CPU profile. The version-00 format is fixed
(55 characters); `tracestate` is not parsed here (`context_from_headers` keeps it, for HTTP).
asyncio copies contextvars only when a task is *created*: work queued for an existing task runs in
that task's context, so a stage passes the message's context explicitly (`start_span(context=…)`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_W3C = TraceContextTextMapPropagator()
_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2
# Lowercase hex only, as the spec (and the propagator) require; `int(…, 16)` alone would take more.
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(traceparent: str | bytes | None) -> SpanContext | None:
    """The remote span a `traceparent` names, or None when it is absent or not W3C version 00."""
    if not traceparent or len(traceparent) != _LENGTH:
        return None
    text = traceparent.decode("ascii", "replace") if isinstance(traceparent, bytes) else traceparent
    match = _VERSION_00.fullmatch(text)
    if match is None:
        return None
    trace_id, span_id, flags = int(match[1], 16), int(match[2], 16), int(match[3], 16)
    if trace_id == 0 or span_id == 0:
        return None  # all-zero ids are invalid by the spec
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def format_traceparent(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


def traceparent_of(span: Span) -> str | None:
    """The `traceparent` that makes a receiver's span a child of `span` (None for an invalid span)."""
    span_context = span.get_span_context()
    return format_traceparent(span_context) if span_context.is_valid else None


def traceparent_header(span: Span) -> bytes | None:
    """`traceparent_of` as a Kafka header value."""
    span_context = span.get_span_context()
    return format_traceparent(span_context).encode() if span_context.is_valid else None


def current_traceparent() -> str | None:
    return traceparent_of(trace.get_current_span())


def context_from_traceparent(traceparent: str | bytes | None) -> Context | None:
    """A parent context for a span continuing the remote trace; None when there is none to continue."""
    span_context = parse_traceparent(traceparent)
    return trace.set_span_in_context(NonRecordingSpan(span_context)) if span_context else None


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """Through the W3C propagator: keeps `tracestate` (HTTP requests, where the cost does not matter)."""
    return _W3C.extract(dict(headers))


def link_to(traceparent: str | bytes | None) -> Link | None:
    """A link to the trace that `traceparent` names (a send's, which came back through Meta)."""
    span_context = parse_traceparent(traceparent)
    return Link(span_context) if span_context else None


def exemplar_of(span: Span) -> dict[str, str] | None:
    """`{"trace_id": …}` for a metric observed inside `span` (only sampled spans can be looked up)."""
    span_context = span.get_span_context()
    if span_context.is_valid and span_context.trace_flags.sampled:
        return {"trace_id": f"{span_context.trace_id:032x}"}
    return None


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_trace_ids() -> tuple[str, str] | None:
    """The current span's trace id and span id, as logs write them; None outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
