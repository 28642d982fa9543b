"""The store process on a real broker: records on the four topics reach the database and the read API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr

from pipeline.config import Settings
from pipeline.local.kafka import free_port
from pipeline.store.projection import Record
from pipeline.store.service import StoreService
from pipeline.store.settings import sqlite_url
from pipeline.topics import TopicCatalog
from tests.store.conftest import PostgresServer
from tests.store.records import CONTACT, at, delivered_chain, inbound

HEADERS = {"Authorization": "Bearer dev-key"}


def store_settings(settings: Settings, database_url: str) -> Settings:
    store = settings.store.model_copy(update={
        "port": free_port(), "database_url": SecretStr(database_url),
        "group_id": f"store-{settings.kafka.topic_prefix}", "retention_interval_seconds": 3600.0})
    return settings.model_copy(update={"store": store})


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "store.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.dsn(server.new_database())


@pytest.fixture
async def running(settings: Settings, topics: TopicCatalog, database_url: str) -> AsyncIterator[Settings]:
    configured = store_settings(settings, database_url)
    service = StoreService(configured)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield configured
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def publish(settings: Settings, records: list[Record]) -> None:
    catalog = TopicCatalog(settings.kafka)
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True)
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(catalog.name(record.topic), record.value, key=b"k")
    finally:
        await producer.stop()


async def eventually(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(AssertionError, httpx.HTTPError):
            return await check()
        if asyncio.get_running_loop().time() > deadline:
            return await check()  # raise the last assertion
        await asyncio.sleep(0.25)


async def test_records_on_the_topics_reach_the_read_api(running: Settings) -> None:
    await publish(running, [*delivered_chain("req_s1", "wamid.S1"),
                            inbound("wamid.in.S1", at(30), reply_to="wamid.S1")])
    base = f"http://127.0.0.1:{running.store.port}"
    async with httpx.AsyncClient(base_url=base, headers=HEADERS) as http:
        async def delivered() -> dict[str, Any]:
            response = await http.get("/v1/messages/req_s1")
            assert response.status_code == 200
            body: dict[str, Any] = response.json()
            assert body["status"] == "read"
            return body

        body = await eventually(delivered)
        assert [s["status"] for s in body["timeline"]] == ["accepted", "sent", "delivered", "read"]

        async def conversation() -> list[str]:
            items = (await http.get(f"/v1/contacts/{CONTACT}/messages")).json()["messages"]
            assert len(items) == 2
            return [i["direction"] for i in items]

        assert await eventually(conversation) == ["inbound", "outbound"]
        ready = await http.get("/readyz")
        assert ready.json() == {"ready": True, "reasons": []}
        metrics = (await http.get("/metrics")).text
        assert 'delivery_store_rows_written_total{table="outbound_messages"}' in metrics


async def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """The dead letters on the topic so far, decoded."""
    consumer = AIOKafkaConsumer(TopicCatalog(settings.kafka).dead_letters, **settings.kafka.client_kwargs(),
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        return [orjson.loads(r.value) for records in batch.values() for r in records]
    finally:
        await consumer.stop()


async def stored_eventually(running: Settings, request_id: str, status: str | None = None) -> None:
    """Until the read API answers for `request_id` (with `status`, when given)."""
    base = f"http://127.0.0.1:{running.store.port}"
    async with httpx.AsyncClient(base_url=base, headers=HEADERS) as http:
        async def stored() -> None:
            response = await http.get(f"/v1/messages/{request_id}")
            assert response.status_code == 200
            if status is not None:
                assert response.json()["status"] == status

        await eventually(stored)


async def test_a_bad_record_is_dead_lettered_and_the_ones_behind_it_are_stored(running: Settings) -> None:
    bad = Record(delivered_chain("x", "y")[0].topic, b'{"request_id": "req_bad", "to": "not a number"}')
    await publish(running, [bad, *delivered_chain("req_s2", "wamid.S2", upto="sent")])
    await stored_eventually(running, "req_s2", status="sent")
    letters = await dead_letters(running)
    assert len(letters) == 1
    assert (letters[0]["stage"], letters[0]["reason"]) == ("store", "schema_invalid")
    assert "to" in letters[0]["error"]
    assert "not a number" not in letters[0]["error"]  # field and rule, never the value


async def test_a_poison_record_near_the_topics_size_limit_is_dead_lettered_bounded(running: Settings) -> None:
    """Base64 makes a 900 KB record's copy larger than a produce request may be: the letter keeps a prefix."""
    bad = Record(delivered_chain("x", "y")[0].topic, b'{"request_id": "req_huge", "to": "' + b"9" * 900_000 + b'"}')
    await publish(running, [bad, *delivered_chain("req_s3", "wamid.S3", upto="sent")])
    await stored_eventually(running, "req_s3")
    letters = await dead_letters(running)
    [letter] = [x for x in letters if x["value_size"] > 900_000]
    assert (letter["stage"], letter["value_truncated"]) == ("store", True)
    assert len(letter["value_b64"]) < 1_000_000


async def test_database_credentials_never_reach_the_log(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "s3cret-store-password-xyz"
    url = f"postgresql://store:{password}@127.0.0.1:{free_port()}/store"
    service = StoreService(store_settings(settings, url))
    stop = asyncio.Event()
    opening = asyncio.create_task(service.open_database(stop))
    await asyncio.sleep(2.0)
    reasons = await service.not_ready()
    stop.set()
    await opening
    out = capsys.readouterr()
    logged = out.out + out.err
    assert "store_db_error" in logged
    assert password not in logged
    assert url not in logged
    assert any(r.startswith("database not open: postgresql:") for r in reasons), reasons
    assert not any(password in r for r in reasons)
