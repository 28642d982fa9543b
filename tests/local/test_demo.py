"""`pipeline demo` shows delivery outcomes (as the stages count them) and ends with a summary, also on Ctrl-C."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.local.kafka import free_port
from pipeline.local.stack import LocalStack
from pipeline.topics import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[LocalStack]:
    prefix = f"demo{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix, "partitions": 1},
        api={"port": free_port()},
        sender={"port": free_port(), "group_id": f"{prefix}sender", "pair_interval_seconds": 0},
        ingest={"port": free_port(), "metrics_port": free_port(), "group_id": f"{prefix}ingest"},
        sandbox={"port": free_port(), "latency_median_seconds": 0.005, "sent_after_seconds": 0.02,
                 "delivered_after_seconds": 0.05, "read_after_seconds": 0.1, "failed_after_seconds": 0.03},
        log={"level": "WARNING"},
    )
    asyncio.run(create_topics(settings.kafka))
    stack = LocalStack(settings, use_sandbox=True, log_dir=tmp_path / "logs")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def demo(stack: LocalStack, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "demo", "--api-url", stack.urls["api"], *args],
                            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_demo_reports_delivery_outcomes_at_the_end_and_on_ctrl_c(stack: LocalStack) -> None:
    finished = demo(stack, "--duration", "8", "--rate", "10", "--seed", "1")
    out, err = finished.communicate(timeout=120)
    assert finished.returncode == 0, err
    sent = re.search(r"outcomes: sent (\d+), delivered (\d+)", out)
    assert sent is not None, out
    assert int(sent.group(1)) > 0
    assert "API answers: 202:" in out

    interrupted = demo(stack, "--rate", "5")  # the default 60 s, stopped early
    time.sleep(6)
    interrupted.send_signal(signal.SIGINT)
    out, err = interrupted.communicate(timeout=60)
    assert "interrupted" in err
    assert "outcomes: sent" in out
    assert "Traceback" not in err
