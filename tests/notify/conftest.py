"""Fixtures of the notify tests: records on the real broker, a real receiver, the stage in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from pipeline.contracts import DeliveryStatus, InboundMessage, MessageOutcome, SendResult, StatusEvent
from pipeline.contracts.vocabulary import Stage
from pipeline.notify.service import Notify
from pipeline.notify.settings import NotifySettings
from pipeline.observability import setup
from pipeline.topics import TopicCatalog

NUMBER = "106540352242922"
OTHER_NUMBER = "106540352242933"
SECRET = "test-callback-secret-0123456789"


def notify_settings(settings: Settings, subscriptions: list[dict[str, Any]], **notify: Any) -> Settings:
    values = {
        "port": 0, "group_id": f"notify-{settings.kafka.topic_prefix}", "subscriptions": json.dumps(subscriptions),
        "commit_interval_seconds": 0.2, "order_hold_seconds": 0.5, **notify,
    }
    return settings.model_copy(update={"notify": NotifySettings(**values)})


@asynccontextmanager
async def running_notify(settings: Settings) -> AsyncIterator[Notify]:
    telemetry = setup(Stage.NOTIFY, settings)
    async with Notify(settings, telemetry) as notify:
        yield notify


def result(request_id: str, wamid: str, to: str = "+16505551234", number: str = NUMBER) -> SendResult:
    return SendResult(request_id=request_id, phone_number_id=number, to=to, outcome=MessageOutcome.SENT,
                      wamid=wamid, attempts=1)


def status(wamid: str, value: DeliveryStatus, request_id: str | None, recipient: str = "16505551234",
           number: str = NUMBER) -> StatusEvent:
    return StatusEvent(wamid=wamid, status=value, timestamp=datetime.now(UTC), recipient_id=recipient,
                       phone_number_id=number, request_id=request_id)


def inbound(wamid: str, sender: str = "16505551234", number: str = NUMBER, text: str = "hi") -> InboundMessage:
    return InboundMessage.model_validate({"wamid": wamid, "from": sender, "phone_number_id": number,
                                          "timestamp": datetime.now(UTC), "type": "text", "text": text})


class Records:
    """Writes contract records to their topics, keyed as the pipeline keys them."""

    def __init__(self, settings: Settings, topics: TopicCatalog) -> None:
        self._producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), acks="all")
        self.topics = topics

    async def __aenter__(self) -> Records:
        await self._producer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._producer.stop()

    async def send(self, *records: SendResult | StatusEvent | InboundMessage) -> None:
        for record in records:
            topic, key = self._route(record)
            await self._producer.send_and_wait(topic, record.model_dump_json(by_alias=True).encode(), key=key.encode())

    async def raw(self, topic: str, value: bytes, key: bytes = b"k") -> None:
        await self._producer.send_and_wait(topic, value, key=key)

    def _route(self, record: SendResult | StatusEvent | InboundMessage) -> tuple[str, str]:
        if isinstance(record, SendResult):
            return self.topics.send_results, record.phone_number_id
        if isinstance(record, StatusEvent):
            return self.topics.status_events, record.wamid
        return self.topics.inbound_messages, record.from_


Predicate = Callable[[list[Any]], bool]
