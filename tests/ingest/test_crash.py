"""Kill -9 the consumers mid-stream and start them again: no status event lost, none duplicated.

The receiver runs in the test process; the consumers run as `pipeline ingest` with
INGEST_COMPONENTS=consumers in a child process. Webhooks (shuffled statuses, each webhook delivered
twice, as Meta does) are stored first, so the consumers work through a backlog without pause and the
SIGKILL lands inside a batch: between writing outputs and committing, where it hurts.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from pipeline.config import Settings
from pipeline.contracts import Stage
from pipeline.ingest import Ingest
from pipeline.local.stack import settings_env
from pipeline.observability import setup
from pipeline.topics import create_topics
from tests.ingest.conftest import end_offsets, eventually, ingest_settings, read_topic, signed, status, value, webhook

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MESSAGES = 300
KINDS = ("sent", "delivered", "read")


def start_consumers(settings: Settings, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    level = os.environ.get("TEST_INGEST_LOG_LEVEL", "WARNING")  # INFO shows what each restore repaired
    env = {**os.environ, **settings_env(settings), "INGEST_COMPONENTS": "consumers", "LOG_LEVEL": level}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "ingest"], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )


async def post_all(url: str, bodies: list[bytes]) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for start in range(0, len(bodies), 20):
            responses = await asyncio.gather(
                *(http.post(url, content=body, headers=signed(body)) for body in bodies[start : start + 20])
            )
            assert {r.status_code for r in responses} == {200}


async def events_written(settings: Settings, topic: str) -> int:
    return sum((await end_offsets(settings, topic)).values())


async def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(kafka_bootstrap: str, tmp_path: Path,
                                                                            ) -> None:
    settings = ingest_settings(kafka_bootstrap, batch_max_records=40, port=0, state_dir=tmp_path / "state")
    await create_topics(settings.kafka)
    rng = random.Random(99)
    statuses = [status(f"wamid.kill.{i}", kind, 1764000000 + n) for i in range(MESSAGES)
                for n, kind in enumerate(KINDS)]
    rng.shuffle(statuses)  # read before delivered, sent last, …
    bodies = [webhook(value(statuses[i:i + 3])) for i in range(0, len(statuses), 3)]
    bodies = [b for body in bodies for b in (body, body)]  # every webhook redelivered

    receiver_settings = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"components": "receiver"})}
    )
    log = tmp_path / "consumers.log"
    first: subprocess.Popen[bytes] | None = None
    second: subprocess.Popen[bytes] | None = None
    try:
        async with Ingest(receiver_settings, setup(Stage.INGEST, receiver_settings)) as receiver:
            topic = receiver.topics.status_events
            await post_all(f"http://127.0.0.1:{receiver.port}/webhooks/whatsapp", bodies)
            first = start_consumers(settings, tmp_path, log)

            async def a_third_done() -> bool:
                return await events_written(settings, topic) >= MESSAGES
            await eventually(a_third_done, timeout=60, interval=0.02)
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = start_consumers(settings, tmp_path, log)

            async def all_events() -> list[object]:
                records = await read_topic(settings, topic)
                return records if len(records) >= len(KINDS) * MESSAGES else []
            await eventually(all_events, timeout=90)
            await asyncio.sleep(2)  # anything duplicated would show up now
            records = await read_topic(settings, topic)
        counts = Counter((r.key.decode(), dict(r.headers)["status"].decode()) for r in records)
        expected = {(f"wamid.kill.{i}", kind) for i in range(MESSAGES) for kind in KINDS}
        assert set(counts) == expected, "lost events"
        assert [pair for pair, n in counts.items() if n > 1] == [], "duplicated events"
        # Both processes kept the state on the same disk: the second read only the changelog's tail.
        files = sorted(p.name for p in (tmp_path / "state").glob("status.state-*.sqlite"))
        assert files == [f"status.state-{p}.sqlite" for p in range(settings.kafka.partitions)]
        assert first is not None
        assert first.returncode == -signal.SIGKILL
        assert second is not None
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, "a graceful stop exits 0"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        print(log.read_text(errors="replace")[-3000:])
