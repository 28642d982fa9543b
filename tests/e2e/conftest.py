"""The whole pipeline as users run it: every stage a child process, the sandbox as Meta, a real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings, load_settings
from pipeline.local.kafka import free_port
from pipeline.local.stack import LocalStack
from pipeline.store.settings import sqlite_url
from pipeline.topics import create_topics


def stack_settings(kafka_bootstrap: str, store_database_url: str, notify: dict[str, object] | None = None,
                   **sandbox: object) -> Settings:
    prefix = f"e2e{uuid.uuid4().hex[:8]}."
    return load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix, "partitions": 3},
        api={"port": free_port()},
        sender={"port": free_port(), "group_id": f"{prefix}sender", "rate_per_second": 80.0},
        ingest={"port": free_port(), "metrics_port": free_port(), "group_id": f"{prefix}ingest"},
        store={"port": free_port(), "group_id": f"{prefix}store",
               "database_url": store_database_url},
        notify={"port": free_port(), "demo_receiver_port": free_port(), "group_id": f"{prefix}notify",
                **(notify or {})},
        sandbox={
            "port": free_port(),
            "latency_median_seconds": 0.02,
            "sent_after_seconds": 0.05,
            "delivered_after_seconds": 0.2,
            "read_after_seconds": 0.4,
            "failed_after_seconds": 0.1,
            **sandbox,
        },
    )


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = stack_settings(kafka_bootstrap, sqlite_url(tmp_path_factory.mktemp("store") / "store.db"))
    asyncio.run(create_topics(settings.kafka))
    log_dir: Path = tmp_path_factory.mktemp("stack-logs")
    stack = LocalStack(settings, use_sandbox=True, log_dir=log_dir)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        for log in sorted(log_dir.glob("*.log")):  # shown by pytest only when a test failed
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
