"""A dead letter, fixed, then replayed with `pipeline dead-letters replay`, ends `sent` — once.

The sandbox knows only one business number; a request from another is rejected by "Meta" with code 100
(object does not exist), so the sender dead-letters it as `payload_rejected`. The fix is what an
operator would do: register the number (here: PATCH the sandbox's `phone_number_ids`). Then the replay.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings, load_settings
from pipeline.contracts import DeadLetterReason, Stage
from pipeline.deadletters import Selection, read_entries
from pipeline.local.kafka import free_port
from pipeline.local.stack import LocalStack
from pipeline.topics import TopicCatalog, create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KNOWN = "106540352242922"
UNREGISTERED = "106540352249999"


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[LocalStack]:
    prefix = f"dl{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix, "partitions": 1},
        api={"port": free_port()},
        sender={"port": free_port(), "group_id": f"{prefix}sender"},
        ingest={"port": free_port(), "metrics_port": free_port()},
        sandbox={"port": free_port(), "latency_median_seconds": 0.005, "phone_number_ids": [KNOWN]},
        log={"level": "WARNING"},
    )
    asyncio.run(create_topics(settings.kafka))
    stack = LocalStack(settings, stages=("sandbox", "sender", "api"), use_sandbox=True, log_dir=tmp_path / "logs")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "pipeline", "dead-letters", *args], env=stack.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def wait_for(check: object, timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f}s")


async def outcomes(settings: Settings, request_id: str) -> list[str]:
    consumer = AIOKafkaConsumer(TopicCatalog(settings.kafka).send_results, **settings.kafka.client_kwargs(),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        found: list[str] = []
        for _ in range(5):
            batches = await consumer.getmany(timeout_ms=500)
            for record in (r for batch in batches.values() for r in batch):
                result = json.loads(record.value)
                if result["request_id"] == request_id:
                    found.append(result["outcome"])
        return found
    finally:
        await consumer.stop()


def test_fixed_dead_letter_is_replayed_once_and_sent(stack: LocalStack) -> None:
    settings = stack.settings
    response = httpx.post(
        f"{stack.urls['api']}/v1/messages", headers={"Authorization": "Bearer dev-key"}, timeout=10,
        json={"phone_number_id": UNREGISTERED, "to": "+16505551234",
              "message": {"type": "text", "text": {"body": "hello after the fix"}}},
    )
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]

    selection = Selection(stage=Stage.SENDER, reason=DeadLetterReason.PAYLOAD_REJECTED)
    (entry,) = wait_for(lambda: asyncio.run(read_entries(settings, selection)))  # type: ignore[misc]
    assert entry.letter.request_id == request_id
    assert asyncio.run(outcomes(settings, request_id)) == []  # a dead letter's outcome is the dead letter

    listed = cli(stack, "list", "--stage", "sender", "--reason", "payload_rejected", "--since", "1h")
    assert entry.id in listed.stdout
    assert "payload_rejected" in listed.stdout
    shown = json.loads(cli(stack, "show", entry.id).stdout)
    assert shown["key"] == UNREGISTERED
    assert shown["value"]["request_id"] == request_id
    assert shown["origin"]["topic"] == TopicCatalog(settings.kafka).send_requests

    dry = cli(stack, "replay", "--reason", "payload_rejected", "--dry-run")
    assert f"would replay {entry.id}" in dry.stdout
    time.sleep(2)
    assert asyncio.run(outcomes(settings, request_id)) == [], "a dry run sends nothing"

    # The fix: the number is registered with "Meta".
    fixed = httpx.patch(f"{stack.urls['sandbox']}/_sandbox/config", json={"phone_number_ids": [KNOWN, UNREGISTERED]})
    assert fixed.status_code == 200, fixed.text

    assert f"replayed {entry.id}" in cli(stack, "replay", "--reason", "payload_rejected").stdout
    assert wait_for(lambda: asyncio.run(outcomes(settings, request_id))) == ["sent"]
    again = cli(stack, "replay", "--reason", "payload_rejected")
    assert "0 replayed, 1 already replayed before" in again.stdout
    time.sleep(3)
    assert asyncio.run(outcomes(settings, request_id)) == ["sent"]  # exactly once

    metrics = httpx.get(f"{stack.urls['sender']}/metrics", timeout=10).text
    assert 'delivery_replayed_records_total{stage="sender"} 1.0' in metrics
