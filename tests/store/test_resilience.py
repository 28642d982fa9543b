"""The store process killed with SIGKILL mid-projection, and its PostgreSQL stopped for 30 s."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.config import Settings
from pipeline.local.stack import LocalStack
from pipeline.store.projection import Record
from pipeline.store.settings import sqlite_url
from pipeline.topics import TopicCatalog, create_topics
from tests.e2e.conftest import stack_settings
from tests.store.conftest import PostgresServer
from tests.store.records import at, request, result, status

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
HEADERS = {"Authorization": "Bearer dev-key"}


def _settings(kafka_bootstrap: str, database_url: str, **store: Any) -> Settings:
    settings = stack_settings(kafka_bootstrap, database_url)
    return settings.model_copy(update={"store": settings.store.model_copy(update=store)})


async def _publish(settings: Settings, records: list[Record]) -> None:
    catalog = TopicCatalog(settings.kafka)
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True, linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(catalog.name(r.topic), r.value, key=str(i % 7).encode())
                   for i, r in enumerate(records)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _records_on(settings: Settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs())
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not partitions:
            partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        try:
            return int(conn.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # the schema is not there yet


@pytest.fixture
def stack_logs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "logs"
    yield path
    for log in sorted(path.glob("*.log")):
        print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))


async def test_kill_9_mid_projection_then_restart_leaves_no_duplicate_and_nothing_missing(
    kafka_bootstrap: str, tmp_path: Path, stack_logs: Path
) -> None:
    db = tmp_path / "store.db"
    settings = _settings(kafka_bootstrap, sqlite_url(db), batch_size=50)
    await create_topics(settings.kafka)
    n = 4000
    records: list[Record] = []
    for i in range(n):
        request_id, wamid = f"req_kill_{i:05d}", f"wamid.kill.{i:05d}"
        records += [request(request_id, accepted=at(i)), result(request_id, wamid, accepted=at(i)),
                    status(wamid, "sent", at(i + 1), request_id=request_id, accepted=at(i)),
                    status(wamid, "delivered", at(i + 2), request_id=request_id, accepted=at(i))]
    await _publish(settings, records)
    catalog = TopicCatalog(settings.kafka)
    on_topics = {t: await _records_on(settings, catalog.name(t)) for t in {r.topic for r in records}}
    assert sum(on_topics.values()) == len(records)

    stack = LocalStack(settings, stages=["store"], use_sandbox=False, log_dir=stack_logs)
    try:
        stack.start()
        deadline = time.monotonic() + 120
        while _count(db, "SELECT count(*) FROM status_events") < 200:
            assert time.monotonic() < deadline, "the store projected nothing"
            await asyncio.sleep(0.02)
        stack.stop_stage("store", signal.SIGKILL, grace=5)
        at_kill = _count(db, "SELECT count(*) FROM status_events")
        assert at_kill < 2 * n, "the kill came too late to be mid-projection"
        stack.start_stage("store")
        # Every topic caught up, not just the ones the consumer happened to fetch first: the four
        # topics are fetched in no fixed order, so results and statuses can finish before requests.
        complete = ("SELECT count(*) FROM outbound_messages WHERE status_rank = 2 AND outcome = 'sent'"
                    " AND text IS NOT NULL AND wamid IS NOT NULL")
        while _count(db, complete) < n:
            assert time.monotonic() < deadline + 120, "the restarted store did not catch up"
            await asyncio.sleep(0.25)
    finally:
        stack.stop()
    assert _count(db, "SELECT count(*) FROM outbound_messages") == n
    assert _count(db, "SELECT count(DISTINCT request_id) FROM outbound_messages") == n
    assert _count(db, "SELECT count(*) FROM status_events") == 2 * n
    assert _count(db, "SELECT count(*) FROM outbound_messages WHERE text IS NULL OR wamid IS NULL") == 0


async def test_postgres_stopped_for_30_s_the_store_waits_and_loses_nothing_and_the_api_keeps_accepting(
    kafka_bootstrap: str, postgres_server: PostgresServer, stack_logs: Path
) -> None:
    dsn = postgres_server.dsn(postgres_server.new_database())
    settings = _settings(kafka_bootstrap, dsn, batch_size=100)
    await create_topics(settings.kafka)
    stack = LocalStack(settings, stages=["store", "api"], use_sandbox=False, log_dir=stack_logs)

    def body(n: int) -> dict[str, Any]:
        return {"phone_number_id": "106540352242922", "to": f"+1650555{n:04d}",
                "message": {"type": "text", "text": {"body": f"message {n}"}}}

    try:
        stack.start()
        async with httpx.AsyncClient(headers=HEADERS, timeout=30) as http:
            api, store = stack.urls["api"], stack.urls["store"]
            before = [await http.post(f"{api}/v1/messages", json=body(n)) for n in range(50)]
            assert {r.status_code for r in before} == {202}
            last = before[-1].json()["request_id"]
            deadline = time.monotonic() + 60
            while (await http.get(f"{store}/v1/messages/{last}")).status_code != 200:
                assert time.monotonic() < deadline, "the store did not project before the outage"
                await asyncio.sleep(0.25)

            postgres_server.stop()
            stopped_at = time.monotonic()
            during = [await http.post(f"{api}/v1/messages", json=body(n)) for n in range(50, 100)]
            assert {r.status_code for r in during} == {202}, "the producer API must keep accepting"
            ready = await http.get(f"{store}/readyz")
            while ready.status_code == 200 and time.monotonic() - stopped_at < 20:
                await asyncio.sleep(0.5)
                ready = await http.get(f"{store}/readyz")
            assert ready.status_code == 503
            assert any("database" in reason for reason in ready.json()["reasons"]), ready.json()
            assert (await http.get(f"{store}/v1/messages/{last}")).status_code == 503
            assert (await http.get(f"{api}/v1/messages/{last}")).status_code == 503  # forwarded, same answer
            await asyncio.sleep(max(0.0, 30 - (time.monotonic() - stopped_at)))
            postgres_server.start()

            deadline = time.monotonic() + 90
            while True:
                count = await _pg_count(dsn)
                if count == 100:
                    break
                assert time.monotonic() < deadline, f"{count} of 100 requests stored after the restart"
                await asyncio.sleep(0.5)
            assert (await http.get(f"{store}/readyz")).status_code == 200
    finally:
        stack.stop()
        if not postgres_server.running():
            postgres_server.start()


async def _pg_count(dsn: str) -> int:
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return -1
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('store.numbers', '*', true)")
            count: int = await conn.fetchval(
                "SELECT count(DISTINCT request_id) FROM outbound_messages WHERE text IS NOT NULL")
            return count
    finally:
        await conn.close()
