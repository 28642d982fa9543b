"""`pipeline api` as its own process: serves, logs JSON without message bodies, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipeline.api import server_config
from pipeline.config import Settings
from pipeline.local.kafka import free_port
from pipeline.topics import TopicCatalog
from tests.api.conftest import read_topic, text_request

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_keeps_idle_connections_open_longer_than_its_clients_do(settings: Settings) -> None:
    # httpx expires idle connections at 5 s and AWS's load balancer at 60 s; uvicorn's own default
    # (5 s) raced the first into `httpx.ReadError`s. tests/observability/test_http.py shows it live.
    assert server_config(None, settings).timeout_keep_alive > 60


@pytest.mark.slow
async def test_api_process_serves_logs_json_and_stops_on_sigterm(settings: Settings, topics: TopicCatalog) -> None:
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix, "KAFKA_PARTITIONS": str(settings.kafka.partitions),
           "WHATSAPP_PHONE_NUMBER_ID": "106540352242922", "API_PORT": str(port), "LOG_LEVEL": "INFO",
           "API_KEYS": '{"process-test-key": "*"}'}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "api"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    secret_text = "the body of this message must not be logged"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(60):
                while True:
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
            headers = {"X-API-Key": "process-test-key"}
            accepted = await client.post("/v1/messages", json=text_request(secret_text), headers=headers)
            assert accepted.status_code == 202
            rejected = await client.post("/v1/messages", json=text_request(secret_text, to="+1"), headers=headers)
            assert rejected.status_code == 422
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after shutting down

    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    assert lines
    assert all(line.get("stage") == "api" for line in lines)
    events = [line["event"] for line in lines]
    assert "kafka_producer_connected" in events
    assert "request_rejected" in events
    assert "Application shutdown complete." in events  # the producer was flushed and closed
    text = output.decode()
    assert secret_text not in text
    assert "process-test-key" not in text
    assert "+16505551234" not in text
    assert len(await read_topic(settings, topics.send_requests, at_least=1)) == 1
