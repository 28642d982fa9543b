"""A 202 is a promise: with Kafka stopped the API answers 503, and after a restart it accepts again.

Uses its own broker, so stopping it leaves the session broker (and everyone else's tests) alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pipeline.config import Settings, load_settings
from pipeline.local.kafka import LocalKafka, free_port
from pipeline.topics import TopicCatalog, create_topics
from tests.api.conftest import RunningApi, read_topic, running_api, text_request

# serial: it stops and starts its own broker under racing requests; the other suites' load changes the race.
pytestmark = [pytest.mark.slow, pytest.mark.serial]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    broker = LocalKafka(data_dir=tmp_path / "kafka", port=free_port())
    broker.start()
    try:
        broker.wait_ready(timeout=90)
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def outage_settings(own_broker: LocalKafka) -> Settings:
    settings = load_settings(
        kafka={"bootstrap_servers": own_broker.bootstrap_servers, "topic_prefix": "outage.", "partitions": 2},
        whatsapp={"phone_number_id": "106540352242922"},
        api={"port": 0, "publish_timeout_seconds": 2.0, "retry_after_seconds": 3},
    )
    await create_topics(settings.kafka)
    return settings


async def test_kafka_down_means_503_and_never_202_then_accepting_again(
    own_broker: LocalKafka, outage_settings: Settings
) -> None:
    topics = TopicCatalog(outage_settings.kafka)
    accepted: list[str] = []
    async with running_api(outage_settings) as api:
        before = await api.client.post("/v1/messages", json=text_request("before"), headers=api.auth)
        assert before.status_code == 202
        accepted.append(before.json()["request_id"])

        await asyncio.to_thread(own_broker.stop)
        started = time.monotonic()
        single = await api.client.post("/v1/messages", json=text_request("during"), headers=api.auth)
        assert single.status_code == 503, single.text
        assert time.monotonic() - started < 10  # bounded by API_PUBLISH_TIMEOUT_SECONDS, not hanging
        assert single.headers["retry-after"] == "3"
        assert single.json()["error"]["code"] == "unavailable"
        assert "request_id" not in single.json()

        keyed = await api.client.post("/v1/messages", json=text_request("keyed"),
                                      headers={**api.auth, "Idempotency-Key": "during-outage"})
        assert keyed.status_code == 503
        batch = await api.client.post("/v1/messages:batch", json={"messages": [text_request("b1"), {"to": "x"}]},
                                      headers=api.auth)
        assert batch.status_code == 503 or batch.json()["accepted"] == 0
        assert [r["status"] for r in batch.json()["results"]] == [503, 422]
        assert (await api.client.get("/readyz")).status_code == 503

        await asyncio.to_thread(own_broker.start)
        await asyncio.to_thread(own_broker.wait_ready, 90)
        async with asyncio.timeout(90):
            while True:
                after = await api.client.post("/v1/messages", json=text_request("after"),
                                              headers={**api.auth, "Idempotency-Key": "after-restart"})
                if after.status_code == 202:
                    break
                assert after.status_code in (503, 409)
                await asyncio.sleep(0.5)
        accepted.append(after.json()["request_id"])
        assert (await api.client.get("/readyz")).status_code == 200
        # The key used during the outage is free again (its claim, if it landed late, was released).
        retried = await api.client.post("/v1/messages", json=text_request("keyed"),
                                        headers={**api.auth, "Idempotency-Key": "during-outage"})
        assert retried.status_code == 202, retried.text
        accepted.append(retried.json()["request_id"])

    # Every 202 is on the topic. (A 503'd record may also arrive later if the broker had taken it
    # before the timeout; the answer only promises that no 202 was given for a record Kafka lacked.)
    records = await read_topic(outage_settings, topics.send_requests, at_least=len(accepted), timeout=30)
    on_topic = {orjson.loads(r.value)["request_id"] for r in records}
    assert set(accepted) <= on_topic
    bodies = [orjson.loads(r.value)["message"]["text"]["body"] for r in records]
    assert bodies.count("keyed") == 1


async def test_no_record_answered_503_ever_reaches_the_topic(own_broker: LocalKafka, outage_settings: Settings) -> None:
    """Issue 13, finding 6: 60 of 60 requests answered 503 during an outage were published anyway."""
    topics = TopicCatalog(outage_settings.kafka)
    timeout = outage_settings.api.publish_timeout_seconds
    answers: dict[str, int] = {}

    async def post(api: RunningApi, body: str) -> None:
        started = time.monotonic()
        response = await api.client.post("/v1/messages", json=text_request(body), headers=api.auth)
        assert time.monotonic() - started < timeout + 3, "the answer must come within API_PUBLISH_TIMEOUT_SECONDS"
        answers[body] = response.status_code

    async with running_api(outage_settings) as api:
        assert (await api.client.post("/v1/messages", json=text_request("warm"), headers=api.auth)).status_code == 202
        # Requests racing the broker's death, then requests during the outage.
        racing = [asyncio.create_task(post(api, f"racing-{i}")) for i in range(20)]
        stopping = asyncio.create_task(asyncio.to_thread(own_broker.stop))
        racing += [asyncio.create_task(post(api, f"stopping-{i}")) for i in range(20)]
        await stopping
        await asyncio.gather(*racing)
        await asyncio.gather(*(post(api, f"during-{i}") for i in range(40)))
        assert all(answers[f"during-{i}"] == 503 for i in range(40)), answers

        await asyncio.to_thread(own_broker.start)
        await asyncio.to_thread(own_broker.wait_ready, 90)
        async with asyncio.timeout(90):
            while (await api.client.post("/v1/messages", json=text_request("after"),
                                         headers={**api.auth, "Idempotency-Key": "after"})).status_code != 202:
                await asyncio.sleep(0.5)
        await asyncio.sleep(max(5.0, 2 * timeout))  # anything the producer still held would land by now

    accepted = [body for body, status in answers.items() if status == 202]
    records = await read_topic(outage_settings, topics.send_requests, at_least=len(accepted) + 2, timeout=30)
    on_topic = [orjson.loads(r.value)["message"]["text"]["body"] for r in records]
    answered_503 = sorted(body for body, status in answers.items() if status == 503)
    assert answered_503
    assert not set(answered_503) & set(on_topic), "a request answered 503 was written"
    assert {body for body, status in answers.items() if status == 202} <= set(on_topic)
    assert set(answers.values()) <= {202, 503, 504}
