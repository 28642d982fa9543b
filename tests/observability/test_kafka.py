"""One trace runs through a real Kafka broker: HTTP request → produce → consume → HTTP call."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from faststream.kafka import KafkaBroker, KafkaMessage
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.config import Settings
from pipeline.contracts.vocabulary import Stage
from pipeline.observability import broker_middlewares, get_logger, setup
from pipeline.observability.kafka import KafkaObservabilityMiddleware
from pipeline.topics import TopicCatalog
from tests.observability.helpers import by_name, json_lines, parent_id, serve_app, wait_for_spans

PNID = "106540352242922"


def _echo_app() -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"traceparent": request.headers.get("traceparent")})

    return Starlette(routes=[Route("/echo", echo)])


async def test_publish_consume_http_call_is_one_correctly_parented_trace(
    settings: Settings, topics: TopicCatalog, capsys
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup(Stage.SENDER, settings, span_exporter=exporter)
    topic = topics.send_requests
    app = _echo_app()
    handled = asyncio.Event()
    echoed: list[str] = []
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers, middlewares=broker_middlewares(telemetry.tracer_provider, "test")
    )

    async with serve_app(app) as base_url:

        @broker.subscriber(topic, group_id=settings.sender.group_id, auto_offset_reset="earliest")
        async def handle(body: dict[str, str]) -> None:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{base_url}/echo")
            echoed.append(response.json()["traceparent"])
            get_logger("test.handler").info("handled", status=response.status_code)
            handled.set()

        await broker.start()
        try:
            await broker.publish({"hello": "world"}, topic, key=PNID.encode())
            await asyncio.wait_for(handled.wait(), 30)
            spans = await wait_for_spans(exporter, lambda s: any(x.name == f"process {topic}" for x in s))
        finally:
            await broker.stop()

    create = by_name(spans, f"create {topic}")
    send = by_name(spans, f"send {topic}")
    process = by_name(spans, f"process {topic}")
    client = by_name(spans, "GET")

    assert len({s.context.trace_id for s in spans}) == 1, "every span belongs to one trace"
    assert create.parent is None
    assert parent_id(send) == create.context.span_id
    assert parent_id(process) == create.context.span_id  # the context carried in the traceparent header
    assert parent_id(client) == process.context.span_id
    tp = f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-{client.context.trace_flags:02x}"
    assert echoed == [tp]  # what the server joins: the client span
    assert [s.kind for s in (create, send, process, client)] == [
        SpanKind.PRODUCER, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CLIENT,
    ]
    attrs = process.attributes or {}
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == topic
    assert attrs["messaging.consumer.group.name"] == settings.sender.group_id
    assert attrs["messaging.destination.partition.id"] == str(attrs["messaging.kafka.destination.partition"])
    assert attrs["messaging.kafka.offset"] == 0
    assert (send.attributes or {})["messaging.destination.name"] == topic
    assert all(s.resource.attributes["service.name"] == "delivery-sender" for s in spans)

    handled_lines = [line for line in json_lines(capsys.readouterr().out) if line.get("event") == "handled"]
    assert len(handled_lines) == 1
    assert handled_lines[0]["trace_id"] == format(process.context.trace_id, "032x")
    assert handled_lines[0]["span_id"] == format(process.context.span_id, "016x")
    assert handled_lines[0]["stage"] == "sender"


async def test_api_server_span_is_the_parent_of_the_kafka_produce_span(
    settings: Settings, topics: TopicCatalog
) -> None:
    """Two stages in one process, each with its own provider: the trace crosses from one to the other."""
    exporter = InMemorySpanExporter()
    api = setup(Stage.API, settings, span_exporter=exporter)
    sender = setup(Stage.SENDER, settings, span_exporter=exporter)
    topic = topics.send_requests
    producer = KafkaBroker(settings.kafka.bootstrap_servers, middlewares=broker_middlewares(api.tracer_provider, "api"))
    consumer = KafkaBroker(
        settings.kafka.bootstrap_servers, middlewares=broker_middlewares(sender.tracer_provider, "sender")
    )
    received = asyncio.Event()

    @consumer.subscriber(topic, group_id=settings.sender.group_id, auto_offset_reset="earliest")
    async def handle(body: dict[str, str]) -> None:
        received.set()

    await producer.start()
    await consumer.start()
    try:
        # The API makes its server span itself (pipeline/api/app.py); a publish inside is its child.
        with api.tracer("test").start_as_current_span("POST /v1/messages", kind=SpanKind.SERVER):
            await producer.publish({"to": "+16505551234"}, topic, key=PNID.encode())
        await asyncio.wait_for(received.wait(), 30)
        spans = await wait_for_spans(exporter, lambda s: any(x.name == f"process {topic}" for x in s))
    finally:
        await consumer.stop()
        await producer.stop()

    server = by_name(spans, "POST /v1/messages")
    create = by_name(spans, f"create {topic}")
    process = by_name(spans, f"process {topic}")
    assert server.kind is SpanKind.SERVER
    assert parent_id(create) == server.context.span_id
    assert process.context.trace_id == server.context.trace_id
    assert server.resource.attributes["service.name"] == "delivery-api"
    assert create.resource.attributes["service.name"] == "delivery-api"
    assert process.resource.attributes["service.name"] == "delivery-sender"


async def test_personal_message_keys_are_masked_in_spans(settings: Settings, topics: TopicCatalog) -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup(Stage.INGEST, settings, span_exporter=exporter)
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers, middlewares=broker_middlewares(telemetry.tracer_provider, "ingest")
    )
    await broker.start()
    try:
        await broker.publish(b"{}", topics.inbound_messages, key=b"16505551234")
        await broker.publish(b"{}", topics.status_events, key=b"wamid.HBgL")
    finally:
        await broker.stop()

    keys = {
        (s.attributes or {})["messaging.destination.name"]: (s.attributes or {}).get("messaging.kafka.message.key")
        for s in exporter.get_finished_spans()
        if s.name.startswith("send ")
    }
    assert keys[topics.inbound_messages] == "+1*******234"
    assert keys[topics.status_events] == "wamid.HBgL"  # message ids are fine in spans


async def test_without_an_exporter_the_trace_context_still_crosses_kafka_into_logs(
    settings: Settings, topics: TopicCatalog, capsys
) -> None:
    """No collector configured: nothing is recorded, but ids still join the producer's and consumer's logs."""
    telemetry = setup(Stage.API, settings)
    middlewares = broker_middlewares(telemetry.tracer_provider, "api")
    assert [type(m) for m in middlewares] == [KafkaObservabilityMiddleware]  # no FastStream telemetry
    broker = KafkaBroker(settings.kafka.bootstrap_servers, middlewares=middlewares)
    seen: list[dict[str, str]] = []
    done = asyncio.Event()

    @broker.subscriber(topics.send_requests, group_id=settings.sender.group_id, auto_offset_reset="earliest")
    async def handle(body: str, msg: KafkaMessage) -> None:
        seen.append(dict(msg.headers))
        get_logger("test.consumer").info("consumed", body=body)
        if len(seen) == 2:
            done.set()

    await broker.start()
    try:
        with telemetry.tracer("test").start_as_current_span("api request") as span:
            assert not span.is_recording()
            get_logger("test.producer").info("publishing")
            await broker.publish("in a trace", topics.send_requests, key=PNID.encode())
        await broker.publish("outside any trace", topics.send_requests, key=PNID.encode())
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await broker.stop()

    lines = json_lines(capsys.readouterr().out)
    (producer,) = [line for line in lines if line.get("event") == "publishing"]
    consumed = {line["body"]: line for line in lines if line.get("event") == "consumed"}
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert producer["trace_id"] == trace_id
    assert consumed["in a trace"]["trace_id"] == trace_id
    assert consumed["in a trace"]["span_id"] != producer["span_id"]  # the consumer's own span
    version, header_trace, parent_span, flags = seen[0]["traceparent"].split("-")
    assert (version, header_trace, parent_span) == ("00", trace_id, producer["span_id"])
    assert not int(flags, 16) & 1, "not sampled: downstream parent-based samplers record nothing either"
    assert consumed["outside any trace"]["trace_id"] not in (None, trace_id)  # a trace of its own


def test_a_stage_broker_takes_the_kafka_security_settings() -> None:
    from faststream.security import BaseSecurity, SASLScram512

    from pipeline.config import KafkaSettings
    from pipeline.kafka_client import broker_options

    def _security(kafka: KafkaSettings) -> Any:  # what `new_broker` hands FastStream
        return broker_options(kafka)["security"]

    sasl = _security(KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                   sasl_username="svc", sasl_password="s3cret"))
    assert isinstance(sasl, SASLScram512)
    assert (sasl.username, sasl.password, sasl.use_ssl) == ("svc", "s3cret", True)
    tls = _security(KafkaSettings(security_protocol="SSL"))
    assert type(tls) is BaseSecurity
    assert tls.use_ssl
    assert _security(KafkaSettings()) is None
