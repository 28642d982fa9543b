"""Log lines are JSON, carry the current trace, and never show a secret or a full phone number."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import httpx
from faststream.kafka import KafkaBroker
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pipeline.config import Settings, load_settings
from pipeline.contracts.vocabulary import Stage
from pipeline.observability import broker_middlewares, get_logger, ops_routes, setup
from pipeline.observability.logs import _Repeats, _UtcTimestamp
from pipeline.topics import TopicCatalog
from tests.observability.helpers import json_lines, serve_app

ACCESS_TOKEN = "EAAGm0PX4ZCpsBAKZBZCx7fZBq0ZAGlr9mQ1vY2ZCZBs8ZD"  # shaped like Meta's tokens
OTHER_BEARER = "ya29.a0AfH6SMBx-not-configured-anywhere"  # only the Bearer pattern can catch this
API_KEY = "k3y-5f1e0c9a7b2d4e68"
SASL_PASSWORD = "kafka-sasl-pa55word"


def _secret_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "whatsapp": settings.whatsapp.model_copy(update={"access_token": SecretStr(ACCESS_TOKEN)}),
            "api": load_settings(api={"keys": f'{{"{API_KEY}": "*"}}'}).api,
            "kafka": settings.kafka.model_copy(
                update={
                    "sasl_mechanism": "PLAIN", "sasl_username": "pipeline", "sasl_password": SecretStr(SASL_PASSWORD)
                }
            ),
        }
    )


class GraphApiError(Exception):
    """Stands in for the client's error: what a careless raise could put in its text and details."""

    def __init__(self, message: str, details: dict[str, object]) -> None:
        super().__init__(message)
        self.details = details


async def test_lines_are_json_with_trace_stage_and_instance(settings: Settings, capsys) -> None:
    telemetry = setup(Stage.SENDER, settings, span_exporter=InMemorySpanExporter())
    log = get_logger("pipeline.sender.test")
    log.info("outside_any_span")
    with telemetry.tracer("test").start_as_current_span("work") as span:
        log.info("message_sent", request_id="req_1", duration_ms=12.5)
        logging.getLogger("aiokafka.consumer").warning("Heartbeat failed for group %s", "g1")
    lines = json_lines(capsys.readouterr().out)

    outside, sent, library = lines
    trace_id = format(span.get_span_context().trace_id, "032x")
    span_id = format(span.get_span_context().span_id, "016x")
    assert "trace_id" not in outside
    for line in (sent, library):
        assert line["trace_id"] == trace_id
        assert line["span_id"] == span_id
        assert line["stage"] == "sender"
        assert line["instance"] == settings.log.instance
        assert datetime.fromisoformat(line["ts"]).utcoffset().total_seconds() == 0
    assert sent["event"] == "message_sent"
    assert sent["level"] == "info"
    assert sent["logger"] == "pipeline.sender.test"
    assert sent["request_id"] == "req_1"
    assert sent["duration_ms"] == 12.5
    assert library["event"] == "Heartbeat failed for group g1"
    assert library["level"] == "warning"
    assert library["logger"] == "aiokafka.consumer"


async def test_a_line_that_names_its_own_trace_gets_no_span_id_from_another(settings: Settings, capsys) -> None:
    # The sender logs a request's outcome with the request's trace id, from a task whose current span
    # may belong to another request: that span's id would pair two traces on one line.
    telemetry = setup(Stage.SENDER, settings, span_exporter=InMemorySpanExporter())
    log = get_logger("pipeline.sender.test")
    own_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with telemetry.tracer("test").start_as_current_span("another request"):
        log.info("message_sent", request_id="req_1", trace_id=own_trace)
    (line,) = json_lines(capsys.readouterr().out)
    assert line["trace_id"] == own_trace
    assert "span_id" not in line


async def test_settings_and_graph_api_errors_reach_the_log_without_secrets(settings: Settings, capsys) -> None:
    settings = _secret_settings(settings)
    setup(Stage.SENDER, settings)
    log = get_logger("pipeline.sender.test")
    body = {
        "error": {
            "message": "Invalid OAuth access token - Cannot parse access token",
            "type": "OAuthException",
            "code": 190,
            "fbtrace_id": "AbCdEf123",
            "access_token": ACCESS_TOKEN,
        }
    }
    error = GraphApiError(f"POST /v23.0/1065/messages failed: Authorization: Bearer {OTHER_BEARER}", body)

    log.info("settings_loaded", settings=settings)
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    log.warning("graph_api_error", error=error, details=error.details, headers=headers)
    try:
        raise error
    except GraphApiError:
        log.exception("send_failed")
    # A library formatting the token into free text, with no recognisable shape around it.
    logging.getLogger("httpx").error("request to graph with %s failed", ACCESS_TOKEN)
    logging.getLogger("aiokafka").error("SASL handshake with password=%s failed", SASL_PASSWORD)
    out = capsys.readouterr().out

    lines = json_lines(out)
    assert [line["event"] for line in lines][:3] == ["settings_loaded", "graph_api_error", "send_failed"]
    for secret in (ACCESS_TOKEN, OTHER_BEARER, API_KEY, SASL_PASSWORD, "sandbox-app-secret"):
        assert secret not in out
    dumped = lines[0]["settings"]
    assert dumped["whatsapp"]["phone_number_id"] == "106540352242922"  # the useful parts survive
    assert dumped["whatsapp"]["access_token"] == "[redacted]"
    assert lines[1]["details"]["error"]["code"] == 190
    assert lines[1]["details"]["error"]["access_token"] == "[redacted]"
    assert "Bearer [redacted]" in lines[1]["error"]
    assert "GraphApiError" in lines[2]["exception"]


async def test_phone_numbers_are_masked(settings: Settings, capsys) -> None:
    setup(Stage.INGEST, settings)
    get_logger("pipeline.ingest.test").info(
        "inbound",
        to="+16505551234",
        wa_id="447700900123",
        contacts=[{"input": "+4915123456789", "wa_id": "4915123456789"}],
        note="user +16505551234 replied",
    )
    out = capsys.readouterr().out
    (line,) = json_lines(out)
    assert line["to"] == "+1*******234"
    assert line["wa_id"] == "+44*******123"
    assert line["contacts"] == [{"input": "+49********789", "wa_id": "+49********789"}]
    assert line["note"] == "user +1*******234 replied"
    for raw in ("6505551234", "7700900123", "15123456789"):
        assert raw not in out


async def test_uvicorn_access_lines_are_json_without_secrets_or_scrapes(settings: Settings, capsys) -> None:
    setup(Stage.INGEST, settings)

    async def verify(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.query_params.get("hub.challenge", ""))

    app = Starlette(routes=[Route("/webhooks/whatsapp", verify), Mount("/", routes=ops_routes(lambda: True))])
    async with serve_app(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        query = {"hub.mode": "subscribe", "hub.verify_token": "verify-me-0123", "hub.challenge": "42"}
        assert (await client.get("/webhooks/whatsapp", params=query)).text == "42"
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
    out = capsys.readouterr().out

    access = [line for line in json_lines(out) if line.get("logger") == "uvicorn.access"]
    assert len(access) == 1, "scrapes and probes are not logged"
    assert access[0]["event"] == "http_request"
    assert access[0]["method"] == "GET"
    assert access[0]["status"] == 200
    assert access[0]["path"] == "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=[redacted]&hub.challenge=42"
    assert "verify-me-0123" not in out


async def test_faststream_lines_are_json_and_per_message_chatter_is_dropped(
    settings: Settings, topics: TopicCatalog, capsys
) -> None:
    telemetry = setup(Stage.SENDER, settings)
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers, middlewares=broker_middlewares(telemetry.tracer_provider, "test")
    )
    calls = asyncio.Event()

    @broker.subscriber(topics.send_requests, group_id=settings.sender.group_id, auto_offset_reset="earliest")
    async def handle(body: str) -> None:
        calls.set()
        raise RuntimeError(f"graph said no: Authorization: Bearer {OTHER_BEARER}")

    await broker.start()
    try:
        await broker.publish("hello", topics.send_requests)
        await asyncio.wait_for(calls.wait(), 30)
        await asyncio.sleep(0.2)  # the error line is written after the handler returns
    finally:
        await broker.stop()
    out = capsys.readouterr().out

    lines = [line for line in json_lines(out) if line["logger"].startswith("faststream")]
    events = [line["event"] for line in lines]
    assert "`Handle` waiting for messages" in events
    assert "Received" not in events
    assert "Processed" not in events
    (error,) = [line for line in lines if line["level"] == "error"]
    assert error["topic"] == topics.send_requests
    assert "RuntimeError" in error["exception"]
    assert OTHER_BEARER not in out


async def test_the_configured_level_applies_to_libraries_that_set_their_own(settings: Settings, capsys) -> None:
    setup(Stage.SENDER, settings.model_copy(update={"log": settings.log.model_copy(update={"level": "WARNING"})}))
    logging.getLogger("faststream.access.kafka").info("`Handle` waiting for messages")  # FastStream sets INFO
    get_logger("pipeline.sender.test").info("routine")
    get_logger("pipeline.sender.test").warning("unusual")
    events = [line["event"] for line in json_lines(capsys.readouterr().out)]
    assert events == ["unusual"]


async def test_a_kafka_clients_repeated_errors_print_once_per_window_with_a_count(settings: Settings, capsys) -> None:
    setup(Stage.SENDER, settings)
    conn = logging.getLogger("aiokafka.conn")
    for node in range(50):  # a broker outage: every node, every 100 ms
        conn.error("Unable connect to node with id %s: %s", node % 3, "Connect call failed")
    logging.getLogger("aiokafka.cluster").warning("Metadata for topic %s not found", "send.requests")
    get_logger("pipeline.sender.test").error("ours are never held back")
    get_logger("pipeline.sender.test").error("ours are never held back")
    lines = json_lines(capsys.readouterr().out)
    assert [line["event"] for line in lines] == [
        "Unable connect to node with id 0: Connect call failed",
        "Metadata for topic send.requests not found",
        "ours are never held back",
        "ours are never held back",
    ]


def test_the_first_line_after_the_window_says_how_many_were_held_back() -> None:
    now = [0.0]
    repeats = _Repeats(window=10.0, clock=lambda: now[0])

    def record(level: int = logging.ERROR, name: str = "aiokafka.conn") -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "Unable connect to node with id %s", (1,), None)

    assert repeats.filter(record())
    now[0] = 9.9
    assert not any(repeats.filter(record()) for _ in range(7))
    assert repeats.filter(record(logging.INFO))  # below WARNING: the level filters decide, not this one
    assert repeats.filter(record(name="httpx"))  # only the Kafka clients'
    now[0] = 10.0
    after = record()
    assert repeats.filter(after)
    assert after.repeated == 7  # type: ignore[attr-defined]
    now[0] = 30.0
    quiet = record()
    assert repeats.filter(quiet)
    assert not hasattr(quiet, "repeated")  # nothing held back since the last line


def test_timestamps_are_utc_with_microseconds_across_a_second(monkeypatch) -> None:
    stamp = _UtcTimestamp()
    midnight = int(datetime(2026, 12, 8, tzinfo=UTC).timestamp()) * 1_000_000_000
    clock = iter([midnight - 1_000, midnight, midnight + 420_999])
    monkeypatch.setattr("pipeline.observability.logs.time.time_ns", lambda: next(clock))
    stamps = [stamp(None, "info", {})["ts"] for _ in range(3)]
    assert stamps == ["2026-12-07T23:59:59.999999Z", "2026-12-08T00:00:00.000000Z", "2026-12-08T00:00:00.000420Z"]
    for text in stamps:
        parsed = datetime.fromisoformat(text)
        assert parsed.utcoffset() == timedelta(0)
        assert abs(parsed.timestamp() - datetime.fromisoformat(stamps[0]).timestamp()) < 0.01
