"""Small helpers shared by the observability tests: a real HTTP server on a free port, JSON lines, spans."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline.observability import uvicorn_config


@contextlib.asynccontextmanager
async def serve_app(app: Any, **options: Any) -> AsyncIterator[str]:
    """Run `app` under uvicorn on 127.0.0.1 and a free port; yield its base URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line must be one JSON object (this is the log contract)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def wait_for_spans(
    exporter: InMemorySpanExporter, ready: Callable[[Sequence[ReadableSpan]], bool], timeout: float = 20.0
) -> Sequence[ReadableSpan]:
    deadline = time.monotonic() + timeout
    while True:
        spans = exporter.get_finished_spans()
        if ready(spans):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"spans not complete after {timeout}s: {[s.name for s in spans]}")
        await asyncio.sleep(0.05)


def by_name(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    matches = [s for s in spans if s.name == name]
    assert len(matches) == 1, f"expected one span {name!r}, got {[s.name for s in spans]}"
    return matches[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None
