"""Integration helpers: produce send requests, run a sender, read outcomes (read_committed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.config import Settings
from pipeline.contracts import SendRequest
from pipeline.sender import serve
from pipeline.topics import TopicCatalog

NUMBER = "106540352242922"


def with_sender(settings: Settings, base_url: str | None = None, **sender: Any) -> Settings:
    """`settings` with sender overrides and the Graph API pointed at `base_url` (a sandbox)."""
    update: dict[str, Any] = {"sender": settings.sender.model_copy(update=sender)}
    if base_url is not None:
        update["whatsapp"] = settings.whatsapp.model_copy(update={"api_base_url": base_url})
    return settings.model_copy(update=update)


def text_request(to: str, request_id: str, **fields: Any) -> SendRequest:
    return SendRequest(request_id=request_id, phone_number_id=NUMBER, to=to,
                       message={"type": "text", "text": {"body": request_id}}, **fields)


async def produce(settings: Settings, requests: Iterable[SendRequest | bytes], key: bytes | None = NUMBER.encode(),
                  ) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True, linger_ms=20)
    await producer.start()
    try:
        topic = TopicCatalog(settings.kafka).send_requests
        futures = []
        for item in requests:
            value = item if isinstance(item, bytes) else item.model_dump_json().encode()
            headers = [("content-type", b"application/json"),
                       ("traceparent", f"00-{uuid.uuid4().hex}-{os.urandom(8).hex()}-01".encode())]
            if isinstance(item, SendRequest):
                headers.append(("request-id", item.request_id.encode()))
            futures.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class Outcomes:
    """Everything committed to send.results and dead-letters, read continuously in the background."""

    def __init__(self, settings: Settings) -> None:
        catalog = TopicCatalog(settings.kafka)
        self.results_topic, self.dlq_topic = catalog.send_results, catalog.dead_letters
        self.results: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self._consumer = AIOKafkaConsumer(
            self.results_topic, self.dlq_topic, **settings.kafka.client_kwargs(),
            group_id=None, auto_offset_reset="earliest", isolation_level="read_committed",
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Outcomes:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                target = self.results if tp.topic == self.results_topic else self.dead_letters
                target.extend(orjson.loads(r.value) for r in records)

    @property
    def count(self) -> int:
        return len(self.results) + len(self.dead_letters)

    async def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.count} of {n} outcomes after {timeout} s")
            await asyncio.sleep(0.05)

    def per_request(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in [*self.results, *self.dead_letters]:
            rid = record.get("request_id")
            if rid is not None:
                counts[rid] = counts.get(rid, 0) + 1
        return counts


@contextlib.asynccontextmanager
async def running_sender(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """`serve(settings)` in this process; stopped (gracefully) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def callback_request_id(send: dict[str, Any]) -> str:
    """The request id the sandbox logged (it logs biz_opaque_callback_data: `<request_id>|<traceparent>`)."""
    return str(send["request_id"]).partition("|")[0]
