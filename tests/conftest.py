"""Fixtures shared by every test: a real Kafka broker for the session and isolated settings.

    async def test_x(settings, topics):           # topics created under a unique prefix
        ...
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings, load_settings
from pipeline.local.kafka import LocalKafka, free_port
from pipeline.topics import TopicCatalog, create_topics

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A real single-node KRaft broker on free ports, started once per test session."""
    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka"), port=free_port())
    broker.start()
    try:
        broker.wait_ready(timeout=90)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalKafka) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Settings:
    """Settings aimed at the session broker, with topics isolated from every other test."""
    return load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 3},
        whatsapp={
            "api_base_url": "http://127.0.0.1:9",  # tests that need the sandbox override this
            "access_token": "sandbox-token",
            "phone_number_id": "106540352242922",
            "app_secret": "sandbox-app-secret",
            "webhook_token": "verify-me",
        },
        api={"port": 0},
        sender={"port": 0, "group_id": f"sender-{topic_prefix}"},
        ingest={"port": 0, "metrics_port": 0, "group_id": f"ingest-{topic_prefix}"},
        sandbox={"port": 0},
    )


@pytest.fixture
async def topics(settings: Settings) -> AsyncIterator[TopicCatalog]:
    await create_topics(settings.kafka)
    return TopicCatalog(settings.kafka)


@pytest.fixture
def fixtures_dir() -> Path:
    """Meta's sample webhook bodies, kept in the repository (tests/fixtures/webhooks/README.md)."""
    path = FIXTURES / "webhooks"
    assert path.is_dir(), f"the repository's webhook fixtures are missing: {path}"
    return path


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A developer's .env must not change what tests see; settings read .env from the cwd.
    if os.path.exists(".env"):
        monkeypatch.chdir(tmp_path)
