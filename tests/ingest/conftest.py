"""Fixtures and helpers for the ingest's tests: a running ingest over real HTTP and the real broker.

    async def test_x(ingest: Running):
        response = await ingest.post(webhook(status("wamid.A", "sent")))
        events = await ingest.wait_events(lambda evs: len(evs) == 1)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline.config import Settings, load_settings
from pipeline.contracts import InboundMessage, Stage, StatusEvent
from pipeline.ingest import Ingest
from pipeline.ingest.signature import sign
from pipeline.observability import setup
from pipeline.topics import TopicCatalog, create_topics

APP_SECRET = "sandbox-app-secret"
VERIFY_TOKEN = "verify-me"
NUMBER = "106540352242922"
USER = "16505551234"


# --- Meta-shaped bodies ---------------------------------------------------------------------------


def status(wamid: str, kind: str, ts: int = 1764000000, callback: str | None = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": wamid, "status": kind, "timestamp": str(ts), "recipient_id": USER, **extra}
    if callback is not None:
        item["biz_opaque_callback_data"] = callback
    return item


def value(statuses: list[dict[str, Any]] | None = None, messages: list[dict[str, Any]] | None = None,
          number: str = NUMBER, **extra: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": number},
        **extra,
    }
    if statuses is not None:
        v["statuses"] = statuses
    if messages is not None:
        v["contacts"] = [{"profile": {"name": "Ana Souza"}, "wa_id": USER}]
        v["messages"] = messages
    return v


def webhook(*values: dict[str, Any], entries: int = 1, field: str = "messages") -> bytes:
    """`values` spread over `entries` entries, one change each (Meta batches both ways)."""
    entry_list: list[dict[str, Any]] = [{"id": "102290129340398", "changes": []} for _ in range(entries)]
    for i, v in enumerate(values):
        entry_list[i % entries]["changes"].append({"field": field, "value": v})
    return orjson.dumps({"object": "whatsapp_business_account", "entry": entry_list})


def signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    return {"X-Hub-Signature-256": sign(secret.encode(), body), "Content-Type": "application/json"}


def new_wamid() -> str:
    return f"wamid.{uuid.uuid4().hex}"


# --- Kafka --------------------------------------------------------------------------------------------


async def read_topic(settings: Settings, topic: str, start: dict[int, int] | None = None) -> list[Any]:
    """Every record of `topic` from `start` (partition → offset; beginning if absent) to the current end."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = _partitions(settings, topic)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, (start or {}).get(tp.partition, 0))
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, recs in batch.items():
                records.extend(r for r in recs if r.offset < ends[tp])
        return records
    finally:
        await consumer.stop()


def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    # Every catalog topic is created with the configured partition count.
    return [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(_partitions(settings, topic))
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.2) -> Any:
    """Await `check()` until it returns something truthy (then return it), or fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last result: {result!r}")
        await asyncio.sleep(interval)


def header(record: Any, name: str) -> str | None:
    value = dict(record.headers or ()).get(name)
    return value.decode() if value is not None else None


# --- a running ingest ---------------------------------------------------------------------------------


def ingest_settings(kafka_bootstrap: str, **ingest: Any) -> Settings:
    prefix = f"ing{uuid.uuid4().hex[:10]}."
    return load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix, "partitions": 3},
        whatsapp={"app_secret": APP_SECRET, "webhook_token": VERIFY_TOKEN, "phone_number_id": NUMBER},
        ingest={"port": 0, "metrics_port": 0, "group_id": f"{prefix}ingest", "session_timeout_seconds": 6, **ingest},
    )


@dataclass
class Running:
    settings: Settings
    ingest: Ingest
    http: httpx.AsyncClient
    spans: InMemorySpanExporter

    @property
    def topics(self) -> TopicCatalog:
        return TopicCatalog(self.settings.kafka)

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        headers = signed(body) if headers is None else headers
        return await self.http.post("/webhooks/whatsapp", content=body, headers=headers)

    async def events(self, wamids: set[str] | None = None) -> list[tuple[Any, StatusEvent]]:
        records = await read_topic(self.settings, self.topics.status_events)
        pairs = [(r, StatusEvent.model_validate_json(r.value)) for r in records]
        return [(r, e) for r, e in pairs if wamids is None or e.wamid in wamids]

    async def wait_events(self, wamids: set[str], count: int, timeout: float = 20.0) -> list[tuple[Any, StatusEvent]]:
        async def check() -> list[tuple[Any, StatusEvent]] | None:
            found = await self.events(wamids)
            return found if len(found) >= count else None

        found: list[tuple[Any, StatusEvent]] = await eventually(check, timeout)
        return found

    async def inbound(self, wamids: set[str]) -> list[InboundMessage]:
        records = await read_topic(self.settings, self.topics.inbound_messages)
        messages = [InboundMessage.model_validate_json(r.value) for r in records]
        return [m for m in messages if m.wamid in wamids]

    async def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self.http.get("/metrics")).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


async def consumers_assigned(ingest: Ingest) -> bool:
    return len(ingest.batches) == 2 and all(batches.ready() for batches in ingest.batches)


@pytest.fixture(scope="module")
async def ingest(kafka_bootstrap: str) -> AsyncIterator[Running]:
    """One ingest (receiver and consumers) for a test module, on its own topics."""
    settings = ingest_settings(kafka_bootstrap)
    await create_topics(settings.kafka)
    spans = InMemorySpanExporter()
    telemetry = setup(Stage.INGEST, settings, span_exporter=spans)
    async with Ingest(settings, telemetry) as running, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{running.port}", timeout=30
    ) as http:
        await eventually(lambda: consumers_assigned(running), timeout=30)
        yield Running(settings, running, http, spans)
