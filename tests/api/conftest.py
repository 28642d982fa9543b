"""Run the producer API in-process on a free port against the session broker, and read topics back.

    async with running_api(settings) as api:      # ready: producer connected, idempotency loaded
        await api.client.post("/v1/messages", json=..., headers=api.auth)
        records = await read_topic(settings, api.topics.send_requests)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline.api import server_config
from pipeline.api.app import create_app
from pipeline.api.service import ApiService
from pipeline.config import Settings
from pipeline.contracts import Stage
from pipeline.kafka_client import seek_to_first
from pipeline.local.kafka import free_port
from pipeline.observability import setup
from pipeline.topics import TopicCatalog

PHONE_NUMBER_ID = "106540352242922"  # the settings fixture's WHATSAPP_PHONE_NUMBER_ID
OTHER_NUMBER_ID = "200000000000001"
KEYS = '{"dev-key": "*", "only-one-number": ["106540352242922"]}'


def text_request(body: str = "hello", to: str = "+16505551234", **extra: Any) -> dict[str, Any]:
    return {"to": to, "message": {"type": "text", "text": {"body": body}}, **extra}


def with_api(settings: Settings, **fields: Any) -> Settings:
    """A copy with some API settings changed (validated, so `keys` is parsed as in production)."""
    api = type(settings.api).model_validate({**settings.api.model_dump(), **fields})
    return settings.model_copy(update={"api": api})


@dataclass
class RunningApi:
    base_url: str
    client: httpx.AsyncClient
    service: ApiService
    spans: InMemorySpanExporter
    topics: TopicCatalog
    auth = {"Authorization": "Bearer dev-key"}


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings, spans: InMemorySpanExporter | None = None, wait_ready: bool = True
) -> AsyncIterator[RunningApi]:
    exporter = spans or InMemorySpanExporter()
    telemetry = setup(Stage.API, settings, span_exporter=exporter)
    service = ApiService(settings, telemetry)
    port = free_port()
    server = uvicorn.Server(server_config(create_app(service, telemetry), with_api(settings, port=port)))
    serving = asyncio.create_task(server.serve())
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
            async with asyncio.timeout(60):
                while not server.started or (wait_ready and not await service.ready()):
                    await asyncio.sleep(0.05)
            yield RunningApi(base_url, client, service, exporter, TopicCatalog(settings.kafka))
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return with_api(settings, keys=KEYS, max_batch_size=5, max_body_bytes=8192,
                    forbidden_patterns=[r"(?i)\bcasino\b"], publish_timeout_seconds=3.0)


@pytest.fixture
async def api(api_settings: Settings, topics: TopicCatalog) -> AsyncIterator[RunningApi]:
    async with running_api(api_settings) as running:
        yield running


async def read_topic(settings: Settings, topic: str, at_least: int = 0, timeout: float = 15.0) -> list[ConsumerRecord]:
    """Every record on `topic` now (waiting until there are `at_least`), in partition then offset order."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        consumer.assign(tps)
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(timeout):
            while True:
                ends = await consumer.end_offsets(tps)
                await seek_to_first(consumer, tps)
                records = []
                while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        records.extend(r for r in batch if r.offset < ends[TopicPartition(r.topic, r.partition)])
                if len(records) >= at_least:
                    return sorted(records, key=lambda r: (r.partition, r.offset))
                await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


def headers_of(record: ConsumerRecord) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}
