"""`pipeline send --file` is resumable: interrupted halfway with Ctrl-C, re-run, every row sent once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pipeline.config import Settings
from pipeline.topics import TopicCatalog
from tests.api.conftest import PHONE_NUMBER_ID, read_topic, running_api, with_api

# serial: it interrupts a running command a third of the way through, a moment the other suites' load shifts.
pytestmark = [pytest.mark.kafka, pytest.mark.serial]

ROWS = 300


def send(base_url: str, path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "send", "--file", str(path), "--template", "order_update",
         "--phone-number-id", PHONE_NUMBER_ID, "--api-url", base_url, "--api-key", "dev-key", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "120"},
    )


async def test_rerun_after_ctrl_c_sends_every_row_exactly_once(
    settings: Settings, topics: TopicCatalog, tmp_path: Path
) -> None:
    path = tmp_path / "campaign.csv"
    lines = ["to,order", *(f"+1650555{n:04d},A-{n}" for n in range(ROWS)), "not-a-number,A-bad"]
    path.write_text("\n".join(lines) + "\n")
    async with running_api(with_api(settings, publish_timeout_seconds=3.0)) as api:
        # 20 rows/s: the file takes 15 s, so the interrupt lands mid-file even though each look at the topic
        # below costs a consumer start (at 60 rows/s the whole file was sent before the test saw a third).
        first = await asyncio.to_thread(send, api.base_url, path, "--rate", "20")
        deadline = time.monotonic() + 60
        while len(await read_topic(settings, topics.send_requests)) < ROWS // 3:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        first.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(first.communicate, timeout=60)
        assert first.returncode == 130, err
        assert "interrupted after" in out

        second = await asyncio.to_thread(send, api.base_url, path)
        out, err = await asyncio.to_thread(second.communicate, timeout=120)
        assert second.returncode == 1, err  # one row is rejected
        # The re-run sends only what the first did not: the two add up to every row, and the API answered
        # the first run's rows as replays (a count read back from the topic here would race its consumer).
        found = re.search(r"accepted: (\d+)   rejected: 1   already sent by an earlier run: (\d+)", out)
        assert found, out
        accepted, earlier = int(found.group(1)), int(found.group(2))
        assert accepted + earlier == ROWS
        assert ROWS // 3 <= earlier < ROWS
        await read_topic(settings, topics.send_requests, at_least=ROWS)
        await asyncio.sleep(1)  # a duplicate would have landed by now; the read below sees the whole topic
        records = await read_topic(settings, topics.send_requests, at_least=ROWS)
    orders = [orjson.loads(r.value)["message"]["template"]["components"][0]["parameters"][0]["text"] for r in records]
    assert sorted(orders) == sorted(f"A-{n}" for n in range(ROWS))  # every row once, none twice
    rejected = (tmp_path / "campaign.csv.rejected.csv").read_text().splitlines()
    assert rejected[0] == "line,to,reason"
    assert rejected[1].startswith(f"{ROWS + 2},not-a-number,")
    assert "E.164" in rejected[1]


def test_unreachable_api_fails_fast_and_verbatim(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "send", "--to", "+16505551234", "--text", "hi",
         "--api-url", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "cannot reach the API at http://127.0.0.1:9" in result.stderr
    # Python start-up included; the command itself gives up within 2 s.
    assert time.monotonic() - started < 10
