"""Trace context that survives hand-offs to other tasks (a scheduler queue, a limiter's wake-up).

    ctx = capture()                # where the message arrives (inside the consumer's span)
    ...
    with attached(ctx):            # in whatever task finally does the work
        await client.send(...)     # the client span joins the message's trace

asyncio copies contextvars only when a task is *created*; work queued for an existing task runs in
that task's context, so the caller's span must travel with the work item.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_W3C = TraceContextTextMapPropagator()


def capture() -> Context:
    return otel_context.get_current()


@contextmanager
def attached(ctx: Context | None) -> Iterator[None]:
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    return _W3C.extract({"traceparent": traceparent})


def context_from_headers(headers: Mapping[str, str]) -> Context:
    return _W3C.extract(dict(headers))


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_span_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.span_id, "016x") if span_context.is_valid else None
