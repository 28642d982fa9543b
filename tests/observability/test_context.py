"""Work handed to another long-lived task keeps the producer's trace only when carried explicitly."""

from __future__ import annotations

import asyncio

from opentelemetry.context import Context
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline.config import Settings
from pipeline.contracts.vocabulary import Stage
from pipeline.observability import attached, capture, setup
from pipeline.observability.context import (
    context_from_headers,
    context_from_traceparent,
    current_trace_id,
    current_traceparent,
)
from tests.observability.helpers import by_name, parent_id


async def test_queued_work_keeps_the_trace_with_capture_and_loses_it_without(settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    tracer = setup(Stage.SENDER, settings, span_exporter=exporter).tracer("test")
    queue: asyncio.Queue[tuple[str, Context | None, asyncio.Event]] = asyncio.Queue()

    async def worker() -> None:
        # Created before any span exists, like a limiter's or scheduler's worker: its own context
        # has no span, whatever the tasks that feed it were doing.
        while True:
            name, ctx, done = await queue.get()
            with attached(ctx), tracer.start_as_current_span(name):
                pass
            done.set()

    worker_task = asyncio.create_task(worker())
    try:
        for name, carry in (("carried", True), ("dropped", False)):
            with tracer.start_as_current_span(f"handle {name}"):
                done = asyncio.Event()
                await queue.put((f"work {name}", capture() if carry else None, done))
                await done.wait()
    finally:
        worker_task.cancel()

    spans = exporter.get_finished_spans()
    carried, carried_handler = by_name(spans, "work carried"), by_name(spans, "handle carried")
    dropped, dropped_handler = by_name(spans, "work dropped"), by_name(spans, "handle dropped")
    assert parent_id(carried) == carried_handler.context.span_id
    assert carried.context.trace_id == carried_handler.context.trace_id
    assert dropped.parent is None
    assert dropped.context.trace_id != dropped_handler.context.trace_id


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
        with attached(ctx), tracer.start_as_current_span("status webhook"):
            assert current_trace_id() == trace_id
    with attached(context_from_traceparent("00-garbage")), tracer.start_as_current_span("bad"):
        assert current_trace_id() != trace_id  # a malformed header starts a new trace, it does not fail
