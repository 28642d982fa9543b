"""The whole pipeline with notify, as `pipeline run` starts it: API -> sender -> sandbox -> ingest -> notify
-> a real receiver. Each stage is a child process; the broker is real."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.contracts import DeadLetter
from pipeline.local.stack import LocalStack
from pipeline.sandbox.testing import SandboxControl
from pipeline.store.settings import sqlite_url
from pipeline.topics import TopicCatalog, create_topics
from tests.e2e.conftest import stack_settings
from tests.notify.conftest import OTHER_NUMBER, SECRET
from tests.notify.receiver import Receiver

pytestmark = pytest.mark.kafka

NUMBER = "106540352242922"  # the sandbox's default business number
STATUSES = ["send.result", "status.sent", "status.delivered", "status.read"]
OUTAGE_SECONDS = float(os.environ.get("NOTIFY_TEST_OUTAGE_SECONDS", "60"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inbound_autoreply.py"


@pytest.fixture(scope="module")
async def receivers() -> AsyncIterator[tuple[Receiver, Receiver]]:
    async with Receiver(SECRET) as mine, Receiver(SECRET) as theirs:
        yield mine, theirs


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, receivers: tuple[Receiver, Receiver], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    mine, theirs = receivers
    subscriptions = [mine.subscription(NUMBER), theirs.subscription(OTHER_NUMBER)]
    settings = stack_settings(kafka_bootstrap, sqlite_url(tmp_path_factory.mktemp("store") / "store.db"), notify={
        "subscriptions": json.dumps(subscriptions), "retry_base_seconds": 0.5, "retry_max_seconds": 4.0,
        "breaker_reset_seconds": 3.0, "read_timeout_seconds": 15.0,
    })
    log_dir: Path = tmp_path_factory.mktemp("notify-stack-logs")
    stack = LocalStack(settings, use_sandbox=True, log_dir=log_dir)
    try:
        yield stack
    finally:
        stack.stop()
        for log in sorted(log_dir.glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))


@pytest.fixture(scope="module")
async def running(stack: LocalStack) -> LocalStack:
    await create_topics(stack.settings.kafka)
    await asyncio.to_thread(stack.start)
    return stack


@pytest.fixture
async def sandbox(running: LocalStack) -> AsyncIterator[SandboxControl]:
    async with aiohttp.ClientSession() as session:
        yield SandboxControl(running.urls["sandbox"], session)


async def send(stack: LocalStack, to: str, number: str = NUMBER, message: dict[str, Any] | None = None) -> str:
    body = {"to": to, "phone_number_id": number,
            "message": message or {"type": "text", "text": {"body": "Your order shipped"}}}
    async with httpx.AsyncClient(base_url=stack.urls["api"], timeout=30) as api:
        response = await api.post("/v1/messages", headers={"Authorization": "Bearer dev-key"}, json=body)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def of_request(receiver: Receiver, request_id: str) -> list[dict[str, Any]]:
    return [e for e in receiver.events() if e.get("request_id") == request_id]


def complete(receiver: Receiver, request_ids: list[str]) -> bool:
    seen = {(e.get("request_id"), e["type"]) for e in receiver.events()}
    return all((r, t) in seen for r in request_ids for t in STATUSES)


async def notify_dead_letters(stack: LocalStack) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(TopicCatalog(stack.settings.kafka).dead_letters, **stack.settings.kafka.client_kwargs(),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        letters = [DeadLetter.model_validate_json(r.value) for records in batches.values() for r in records]
    finally:
        await consumer.stop()
    return [letter for letter in letters if letter.stage == "notify"]


async def test_a_send_reaches_the_receiver_as_result_then_sent_delivered_read_signed(
    running: LocalStack, receivers: tuple[Receiver, Receiver], sandbox: SandboxControl
) -> None:
    mine, _ = receivers
    request_id = await send(running, "+16505551234")
    await mine.wait_for(lambda _: [e["type"] for e in of_request(mine, request_id)] == STATUSES, timeout=90)
    events = of_request(mine, request_id)
    calls = [c for c in mine.calls if c.event.get("request_id") == request_id]
    assert all(c.signed for c in calls), "every callback verifies with the subscription's secret"
    assert len({e["event_id"] for e in events}) == 4
    wamid = events[0]["wamid"]
    assert wamid
    assert all(e["wamid"] == wamid for e in events)
    assert events[0]["data"]["outcome"] == "sent"
    assert all(e["phone_number_id"] == NUMBER for e in events)

    # The customer answers that message: the reply reaches the receiver too, linked by its context.
    reply = await sandbox.inbound_text("16505551234", "Thanks! When does it arrive?", NUMBER,
                                       context_message_id=wamid)
    await mine.wait_for(lambda _: any(e["wamid"] == reply for e in mine.events()), timeout=60)
    [event] = [e for e in mine.events() if e["wamid"] == reply]
    assert event["type"] == "inbound.message"
    assert event["data"]["text"] == "Thanks! When does it arrive?"
    assert event["data"]["context_wamid"] == wamid


async def test_mark_as_read_reaches_the_sandbox_as_metas_status_read_call(
    running: LocalStack, receivers: tuple[Receiver, Receiver], sandbox: SandboxControl
) -> None:
    mine, _ = receivers
    reply = await sandbox.inbound_text("16505550123", "hello?", NUMBER)
    await mine.wait_for(lambda _: any(e["wamid"] == reply for e in mine.events()), timeout=60)
    request_id = await send(running, "+16505550123",
                            message={"type": "read", "message_id": reply, "typing_indicator": True})
    async with asyncio.timeout(60):
        while not any(r["message_id"] == reply for r in (await sandbox.stats())["reads"]):
            await asyncio.sleep(0.2)
    [read] = [r for r in (await sandbox.stats())["reads"] if r["message_id"] == reply]
    assert read["phone_number_id"] == NUMBER
    assert read["typing_indicator"] is True
    await mine.wait_for(lambda _: bool(of_request(mine, request_id)), timeout=60)
    [result] = of_request(mine, request_id)
    assert result["type"] == "send.result"
    assert result["data"]["outcome"] == "sent"
    assert result["wamid"] == reply


async def test_a_ten_second_endpoint_does_not_slow_another_number(
    running: LocalStack, receivers: tuple[Receiver, Receiver]
) -> None:
    mine, theirs = receivers
    mine.delay = 10.0
    try:
        slow = [await send(running, f"+1650555{n:04d}") for n in range(3)]
        started = time.monotonic()
        fast = []
        accepted: dict[str, float] = {}
        for n in range(5):
            request_id = await send(running, f"+1650666{n:04d}", number=OTHER_NUMBER)
            fast.append(request_id)
            accepted[request_id] = time.monotonic()
        await theirs.wait_for(lambda _: complete(theirs, fast), timeout=60)
        arrived = {c.event["request_id"]: c.at for c in theirs.calls if c.event["type"] == "send.result"}
        latencies = sorted(arrived[r] - accepted[r] for r in fast)
        fast_done = time.monotonic() - started
        print(f"other number's send results arrived {', '.join(f'{x:.2f}' for x in latencies)} s after acceptance;"
              f" all 20 of its callbacks within {fast_done:.1f} s while the slow endpoint takes 10 s per call")
        assert max(latencies) < 5.0
        assert not any(of_request(mine, r) for r in slow), "the slow endpoint has not answered anything yet"
    finally:
        mine.delay = 0.0
    await mine.wait_for(lambda _: complete(mine, slow), timeout=120)


@pytest.mark.slow
async def test_receiver_down_for_a_minute_then_everything_arrives_nothing_dead_lettered(
    running: LocalStack, receivers: tuple[Receiver, Receiver]
) -> None:
    mine, _ = receivers
    before = len(mine.calls)
    await mine.down()
    try:
        requests = []
        for n in range(20):
            requests.append(await send(running, f"+1650777{n:04d}"))
            await asyncio.sleep(OUTAGE_SECONDS / 40)
        await asyncio.sleep(OUTAGE_SECONDS / 2)
    finally:
        await mine.up()
    await mine.wait_for(lambda _: complete(mine, requests), timeout=120)
    during = [c.event for c in mine.calls[before:] if c.event.get("request_id") in requests]
    counts = Counter(e["event_id"] for e in during)
    duplicates = sum(n - 1 for n in counts.values())
    print(f"after a {OUTAGE_SECONDS:.0f} s outage: {len(counts)} events delivered, {duplicates} duplicate(s)")
    assert len(counts) == 4 * len(requests)
    assert duplicates <= running.settings.notify.concurrency_per_endpoint  # at most what was in flight
    assert await notify_dead_letters(running) == []


@pytest.mark.slow
async def test_kill_9_of_notify_mid_run_then_a_restart_loses_nothing(
    running: LocalStack, receivers: tuple[Receiver, Receiver]
) -> None:
    mine, _ = receivers
    before = len(mine.calls)
    requests = [await send(running, f"+1650888{n:04d}") for n in range(10)]
    await mine.wait_for(lambda calls: len(calls) > before + 5, timeout=60)
    running.stop_stage("notify", sig=signal.SIGKILL, grace=10)
    requests += [await send(running, f"+1650888{n:04d}") for n in range(10, 30)]
    await asyncio.sleep(2.0)
    await asyncio.to_thread(running.start_stage, "notify")
    await mine.wait_for(lambda _: complete(mine, requests), timeout=120)
    counts = Counter(c.event["event_id"] for c in mine.calls[before:] if c.event.get("request_id") in requests)
    print(f"kill -9 mid-run: {len(counts)} events delivered, {sum(n - 1 for n in counts.values())} duplicate(s)")
    assert len(counts) == 4 * len(requests)


async def test_the_inbound_example_marks_read_and_replies_through_the_api(
    running: LocalStack, receivers: tuple[Receiver, Receiver], sandbox: SandboxControl, tmp_path: Path
) -> None:
    mine, _ = receivers
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": running.settings.kafka.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": running.settings.kafka.topic_prefix, "PIPELINE_API_URL": running.urls["api"],
           "PIPELINE_API_KEY": "dev-key", "AUTOREPLY_GROUP_ID": f"example-{time.time_ns()}",
           "AUTOREPLY_START": "earliest"}
    output = (tmp_path / "example.log").open("w+")
    example = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), env=env, stdout=output, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        wamid = await sandbox.inbound_text("16505554321", "Is my parcel on its way?", NUMBER)
        async with asyncio.timeout(90):
            while not any(r["message_id"] == wamid for r in (await sandbox.stats())["reads"]):
                assert example.returncode is None, Path(output.name).read_text()
                await asyncio.sleep(0.3)
        [read] = [r for r in (await sandbox.stats())["reads"] if r["message_id"] == wamid]
        assert read["typing_indicator"] is True
        async with asyncio.timeout(90):
            while not [s for s in await sandbox.sends(NUMBER) if s["to"] == "16505554321" and s["type"] == "text"]:
                await asyncio.sleep(0.3)
        await mine.wait_for(lambda _: sum(1 for e in mine.events() if e["type"] == "send.result"
                                          and e["data"]["to"] == "+16505554321") >= 2, timeout=60)
        output.seek(0)
        assert f"replied to {wamid}" in output.read()
    finally:
        example.terminate()
        await example.wait()
        output.close()
