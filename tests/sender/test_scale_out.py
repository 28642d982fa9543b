"""Scale-out (issue 20, item 7): sender replicas over 6 partitions and 3 numbers, killed, restarted and added.

Two `pipeline sender` processes share the group; one is killed with -9 mid-run and started again, then
a third joins. At the sandbox no number ever sees more than its cap in any one-second window (counted
over every /messages request it received, accepted or not, so a burst cannot hide behind 130429s), and
every request ends with exactly one outcome that a `read_committed` reader sees.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.contracts import SendRequest
from pipeline.sandbox.testing import running_sandbox
from pipeline.topics import create_topics, numbers_on_distinct_partitions
from tests.sender.kafka_helpers import Outcomes, callback_request_id, produce, text_request
from tests.sender.test_crash import sender_env, start_sender

# serial: it measures per-second rates at the sandbox, which other suites' load would skew.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.serial]

PARTITIONS = 6
CAP = 50  # per number and second, at the sandbox and in the sender
PER_NUMBER = 1500  # ~31 s at the sender's pace (50 / 1.025 per second per number) plus the rebalances


async def test_two_replicas_one_killed_and_restarted_then_a_third_never_exceed_the_cap(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"partitions": PARTITIONS})})
    await create_topics(settings.kafka)
    numbers = numbers_on_distinct_partitions("106540352242922", 3, PARTITIONS)
    requests: list[SendRequest] = []
    for n in range(PER_NUMBER):
        for i, number in enumerate(numbers):
            request = text_request(f"+1650558{(n * 3 + i) % 3000:04d}", f"scale-{i}-{n:05d}")
            requests.append(request.model_copy(update={"phone_number_id": number}))
    total = len(requests)

    async with running_sandbox(in_subprocess=True, rate_per_second=CAP, latency_median_ms=50) as sandbox, \
            Outcomes(settings) as outcomes:
        for number in numbers:
            await produce(settings, [r for r in requests if r.phone_number_id == number], key=number.encode())

        # Every replica alike: the transactional ids belong to the input partitions, not to replicas.
        env = sender_env(settings, sandbox.base_url)
        env.update({"SENDER_RATE_PER_SECOND": str(CAP), "SENDER_MAX_IN_FLIGHT": "50",
                    "SENDER_COMMIT_INTERVAL_SECONDS": "0.5"})

        async def accepted() -> int:
            stats = await sandbox.control.stats()
            return sum(n.get("accepted", 0) for n in stats["numbers"].values())

        async def until_accepted(count: int, timeout: float) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while await accepted() < count:
                assert loop.time() < deadline, f"fewer than {count} accepted sends after {timeout} s"
                assert all(p.returncode is None for p in replicas), "a replica exited: " + logs()
                await asyncio.sleep(0.1)

        def logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("replica-*.log")))

        replicas: list[asyncio.subprocess.Process] = []
        started = asyncio.get_running_loop().time()
        marks: dict[str, float] = {}
        try:
            replicas += [await start_sender(env, tmp_path / "replica-0.log"),
                         await start_sender(env, tmp_path / "replica-1.log")]
            await until_accepted(total // 4, timeout=60)
            marks["kill -9 replica 0"] = asyncio.get_running_loop().time() - started
            replicas[0].send_signal(signal.SIGKILL)
            assert await replicas[0].wait() == -signal.SIGKILL
            replicas[0] = await start_sender(env, tmp_path / "replica-0.log")  # the same replica, restarted
            marks["restarted replica 0"] = asyncio.get_running_loop().time() - started
            await until_accepted(total * 3 // 5, timeout=90)
            replicas.append(await start_sender(env, tmp_path / "replica-2.log"))
            marks["added replica 2"] = asyncio.get_running_loop().time() - started
            await outcomes.wait_for(total, timeout=120)
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(1.0)  # anything extra (a duplicate outcome) would show up now
            for process in replicas:
                process.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), timeout=30) for p in replicas]
            assert codes == [0, 0, 0], logs()
        finally:
            for process in replicas:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        stats = await sandbox.control.stats()
        sends = await sandbox.control.sends()

    per_number = {n: stats["numbers"][n] for n in numbers}
    worst_requests = max(s["max_requests_per_second"] for s in per_number.values())
    worst_accepted = max(s["max_accepted_per_second"] for s in per_number.values())
    calls = Counter(callback_request_id(s) for s in sends)
    print(f"\nscale-out: {total} requests over {PARTITIONS} partitions and {len(numbers)} numbers in {elapsed:.1f} s "
          f"({', '.join(f'{k} at {v:.1f} s' for k, v in marks.items())}); cap {CAP}/s")
    print(f"scale-out: max per number in any 1 s window at the sandbox: {worst_requests} requests, "
          f"{worst_accepted} accepted; per number (requests/accepted): "
          + ", ".join(f"{n}: {s['max_requests_per_second']}/{s['max_accepted_per_second']}"
                      for n, s in per_number.items()))
    print(f"scale-out: {sum(calls.values()) - len(calls)} repeated Graph calls (kill -9 and rebalances), "
          f"130429 answers: {stats['received']['messages'].get('throttled', 0)}")

    assert worst_requests <= CAP, per_number
    assert "throttled" not in stats["received"]["messages"]
    per_request = outcomes.per_request()
    assert set(per_request) == {r.request_id for r in requests}
    assert set(per_request.values()) == {1}, "every request has exactly one committed outcome"
    assert outcomes.dead_letters == []
    assert {r["outcome"] for r in outcomes.results} == {"sent"}
    assert set(calls) == {r.request_id for r in requests}
