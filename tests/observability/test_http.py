"""`/metrics`, `/healthz`, `/readyz` as a scraper and a probe see them."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from faststream.kafka import KafkaBroker
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import Settings
from pipeline.contracts.vocabulary import MessageOutcome, Stage
from pipeline.observability import OpsServer, broker_middlewares, metrics, setup
from pipeline.observability.metrics import CATALOG_BY_STAGE, catalog_names, describe, exposed_names
from pipeline.topics import TopicCatalog

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


async def test_metrics_lists_every_catalog_metric_and_faststreams_per_topic_series(
    settings: Settings, topics: TopicCatalog
) -> None:
    telemetry = setup(Stage.SENDER, settings)
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers, middlewares=broker_middlewares(telemetry.tracer_provider, "sender")
    )
    handled = asyncio.Event()

    @broker.subscriber(topics.send_requests, group_id=settings.sender.group_id, auto_offset_reset="earliest")
    async def handle(body: str) -> None:
        handled.set()

    await broker.start()
    try:
        await broker.publish("hello", topics.send_requests)
        await asyncio.wait_for(handled.wait(), 30)
        await asyncio.sleep(0.1)  # the processed counter is written after the handler returns
        async with OpsServer("127.0.0.1", 0, lambda: True) as ops, httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{ops.port}/metrics")
    finally:
        await broker.stop()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = exposed_names(response.text)
    for stage in Stage:
        assert catalog_names(stage) <= names, f"{stage} metrics missing: {catalog_names(stage) - names}"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for metric in (m for owned in CATALOG_BY_STAGE.values() for m in owned):
        entry = describe(metric)
        assert families[metric.describe()[0].name].documentation == entry.help
    received = [s for s in families["faststream_received_messages"].samples if s.name.endswith("_total")]
    assert any(s.labels["handler"] == topics.send_requests and s.labels["app_name"] == "sender" and s.value >= 1
               for s in received)
    published = families["faststream_published_messages"].samples
    assert any(s.labels["destination"] == topics.send_requests and s.value >= 1 for s in published)
    assert not [n for n in names if n.endswith("_created")], "_created series are disabled"


async def test_openmetrics_exposition_carries_trace_id_exemplars(settings: Settings) -> None:
    tracer = setup(Stage.SENDER, settings, span_exporter=InMemorySpanExporter()).tracer("test")
    pnid = f"9{uuid.uuid4().int % 10**14:014d}"  # a number of its own: other tests share the registry
    with tracer.start_as_current_span("send") as span:
        metrics.MESSAGES.labels(phone_number_id=pnid, outcome=MessageOutcome.SENT).inc(exemplar=metrics.exemplar())
        metrics.SEND_DURATION.labels(phone_number_id=pnid).observe(0.12, exemplar=metrics.exemplar())
    trace_id = format(span.get_span_context().trace_id, "032x")

    async with OpsServer("127.0.0.1", 0, lambda: True) as ops, httpx.AsyncClient() as client:
        plain = await client.get(f"http://127.0.0.1:{ops.port}/metrics")
        open_metrics = await client.get(f"http://127.0.0.1:{ops.port}/metrics", headers={"Accept": OPENMETRICS})

    assert "trace_id" not in plain.text  # the Prometheus text format has no exemplars
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = {
        sample.name: sample.exemplar
        for family in parse_openmetrics(open_metrics.text)
        for sample in family.samples
        if sample.labels.get("phone_number_id") == pnid and sample.exemplar is not None
    }
    assert exemplars["delivery_messages_total"].labels == {"trace_id": trace_id}
    assert exemplars["delivery_messages_total"].value == 1
    (bucket,) = [e for name, e in exemplars.items() if name == "delivery_send_duration_seconds_bucket"]
    assert bucket.labels == {"trace_id": trace_id}
    assert bucket.value == 0.12


async def test_healthz_is_always_up_and_readyz_follows_the_check() -> None:
    ready = False

    async def check() -> bool:
        return ready

    async with OpsServer("127.0.0.1", 0, check) as ops, httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops.port}") as c:
        assert ops.port > 0
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        not_ready = await c.get("/readyz")
        ready = True
        now_ready = await c.get("/readyz")
    assert (not_ready.status_code, not_ready.json()) == (503, {"ready": False})
    assert (now_ready.status_code, now_ready.json()) == (200, {"ready": True})


async def test_a_connection_idle_past_a_clients_keep_alive_expiry_is_still_open() -> None:
    # httpx drops an idle connection after 5 s; a server that closes it at the same moment races a
    # reuse into a reset (`httpx.ReadError`). So after 5 s idle the server must still hold it open.
    # httpx checks a pooled connection before reusing it and silently opens a new one if the server
    # closed it, so the same local port on both requests shows the first connection was kept.
    client_expiry = 5.0
    async with OpsServer("127.0.0.1", 0, lambda: True) as ops, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{ops.port}", limits=httpx.Limits(keepalive_expiry=60)
    ) as client:

        async def local_port() -> int:
            answer = await client.get("/healthz")
            assert answer.status_code == 200
            return int(answer.extensions["network_stream"].get_extra_info("client_addr")[1])

        before = await local_port()
        await asyncio.sleep(client_expiry + 0.5)
        assert await local_port() == before, "the server closed an idle connection a client would still reuse"


def test_exemplar_is_none_outside_a_span() -> None:
    assert metrics.exemplar() is None
