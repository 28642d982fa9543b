"""`setup()` is idempotent, and several stages can share one process without mixing their telemetry."""

from __future__ import annotations

import asyncio
import logging

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pipeline.config import Settings
from pipeline.contracts.vocabulary import Stage
from pipeline.observability import Telemetry, get_logger, setup
from pipeline.observability.logs import _PipelineHandler
from tests.observability.helpers import json_lines, serve_app


def _pong_app() -> Starlette:
    return Starlette(routes=[Route("/ping", lambda _: PlainTextResponse("pong"))])


async def test_setup_twice_returns_the_same_telemetry_and_one_handler(settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    first = setup(Stage.SENDER, settings, span_exporter=exporter)
    second = setup(Stage.SENDER, settings, span_exporter=exporter)
    assert second is first
    replaced = setup(Stage.SENDER, settings, span_exporter=InMemorySpanExporter())
    assert replaced.tracer_provider is not first.tracer_provider  # a new exporter: a new provider
    for name in ("", "faststream", "faststream.access.kafka"):
        ours = [h for h in logging.getLogger(name).handlers if isinstance(h, _PipelineHandler)]
        assert len(ours) == 1, name


async def test_stages_in_one_process_keep_their_own_spans_and_log_fields(settings: Settings, capsys) -> None:
    exporters = {Stage.API: InMemorySpanExporter(), Stage.SENDER: InMemorySpanExporter()}

    async with serve_app(_pong_app(), access_log=False) as base_url:

        async def stage_main(stage: Stage) -> Telemetry:
            # What each stage's serve() does first; the tasks it starts inherit the stage.
            telemetry = setup(stage, settings, span_exporter=exporters[stage])
            await asyncio.sleep(0.05)  # let the other stage set up in between
            async with httpx.AsyncClient() as client:
                await asyncio.create_task(client.get(f"{base_url}/ping"))
            get_logger("test").info("stage_ran")
            # Code that asks OpenTelemetry's global API gets its stage's provider too.
            with trace.get_tracer("business").start_as_current_span("global api"):
                pass
            return telemetry

        await asyncio.gather(stage_main(Stage.API), stage_main(Stage.SENDER))

    for stage, exporter in exporters.items():
        spans = exporter.get_finished_spans()
        assert [s.name for s in spans] == ["GET", "global api"], stage
        assert {s.resource.attributes["service.name"] for s in spans} == {f"delivery-{stage.value}"}
    lines = [line for line in json_lines(capsys.readouterr().out) if line.get("event") == "stage_ran"]
    assert sorted(line["stage"] for line in lines) == ["api", "sender"]
