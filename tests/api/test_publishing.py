"""docs/publishing.md's examples, run as written against the real broker (only the address and topic
replaced): each must put a valid SendRequest, with its headers, in the partition the API would use.

That the sender then delivers such a record like an API request is the end-to-end tests' business.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

from aiokafka.partitioner import murmur2

from pipeline.config import Settings
from pipeline.contracts import SendRequest
from pipeline.topics import TopicCatalog
from tests.api.conftest import headers_of, read_topic

DOC = (Path(__file__).resolve().parents[2] / "docs" / "publishing.md").read_text()


def example(language: str, containing: str) -> str:
    blocks: list[str] = re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)
    return next(block for block in blocks if containing in block)


def murmur2_partition(key: bytes, partitions: int) -> int:
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def aimed_at(code: str, settings: Settings, topics: TopicCatalog) -> str:
    code = code.replace("127.0.0.1:9092", settings.kafka.bootstrap_servers)
    return re.sub(r"(?<![\w.])send\.requests(?![\w.])", topics.send_requests, code)


async def test_python_example_publishes_a_valid_record(settings: Settings, topics: TopicCatalog) -> None:
    code = aimed_at(example("python", "AIOKafkaProducer"), settings, topics)
    await asyncio.to_thread(exec, compile(code, "publishing.md", "exec"), {})  # it calls asyncio.run itself
    [record] = await read_topic(settings, topics.send_requests, at_least=1)
    request = SendRequest.model_validate_json(record.value)
    assert request.request_id == "req_billing_000017"
    assert record.key == b"106540352242922"
    assert record.partition == murmur2_partition(record.key, settings.kafka.partitions)
    assert headers_of(record)["request-id"] == request.request_id


async def test_kcat_example_lands_where_the_api_would_put_it(settings: Settings, topics: TopicCatalog) -> None:
    assert shutil.which("kcat"), "kcat is missing: `make setup` installs it (Debian's kcat)"
    command = aimed_at(example("bash", "kcat -P"), settings, topics)
    result = await asyncio.to_thread(subprocess.run, ["bash", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [record] = await read_topic(settings, topics.send_requests, at_least=1)
    request = SendRequest.model_validate_json(record.value)
    assert (request.request_id, request.to) == ("req_kcat_000001", "+16505551234")
    assert record.partition == murmur2_partition(b"106540352242922", settings.kafka.partitions)
    headers = headers_of(record)
    assert headers["content-type"] == "application/json"
    assert headers["request-id"] == "req_kcat_000001"
    assert headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
