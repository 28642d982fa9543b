"""A replica paused past its session timeout (SIGSTOP) while another takes over: after SIGCONT it commits
nothing and sends nothing for the partitions it lost (issue 20, item 7: the zombie gap).

The paused replica ("zombie") and the one that takes over talk to two different sandboxes, so each
Graph call is known to come from one or the other. The zombie commits every 60 s only, so everything it
did before the pause sits in its open transaction; the pause is chosen while all of its calls are
waiting for the sandbox's 3 s answer (its 4 call slots full, nothing about to be written).

What is asserted:
* every request has exactly one outcome a `read_committed` reader sees: the taker-over redid all of
  them; the zombie's open transaction (its outcomes of the same requests) was aborted when the
  taker-over started its producers, and the outcomes of the calls answered after the resume could not
  be published at all (`ProducerFenced`);
* the zombie's sandbox receives no call after the resume (its calls in flight at the pause had
  all been written, and accepted, before it);
* the zombie, finding its producers fenced, exits with an error (it would restart from the last commit).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.sandbox.testing import running_sandbox
from pipeline.topics import TopicCatalog
from tests.sender.kafka_helpers import NUMBER, Outcomes, callback_request_id, produce, text_request
from tests.sender.test_crash import sender_env, start_sender

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOTAL = 300
SESSION = 6.0  # the broker's minimum session timeout


async def test_a_replica_paused_past_its_session_timeout_neither_commits_nor_sends_after_it_resumes(
    settings: Settings, topics: TopicCatalog, tmp_path: Path
) -> None:
    requests = [text_request(f"+1650559{n:04d}", f"zombie-{n:04d}") for n in range(TOTAL)]
    zombie_log, taker_log = tmp_path / "zombie.log", tmp_path / "taker.log"

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in (zombie_log, taker_log) if p.exists())

    async with running_sandbox(rate_per_second=0, latency_median_ms=3000, latency_sigma=0) as slow, \
            running_sandbox(rate_per_second=0, latency_median_ms=5) as fast, Outcomes(settings) as outcomes:
        await produce(settings, requests)
        zombie_env = sender_env(settings, slow.base_url)
        zombie_env.update({
            "SENDER_MAX_IN_FLIGHT": "4",
            "SENDER_RATE_PER_SECOND": "100",
            "SENDER_COMMIT_INTERVAL_SECONDS": "60",  # nothing committed before the pause
            "SENDER_TRANSACTION_TIMEOUT_SECONDS": "120",  # and the broker would not abort it on its own
            "SENDER_SESSION_TIMEOUT_SECONDS": str(SESSION),
        })
        taker_env = sender_env(settings, fast.base_url)
        taker_env.update({"SENDER_RATE_PER_SECOND": "500", "SENDER_MAX_IN_FLIGHT": "50"})

        zombie = await start_sender(zombie_env, zombie_log)
        taker: asyncio.subprocess.Process | None = None
        try:
            # Pause it between two waves of calls: >= 8 sent, the last wave 1-2 s ago (answers take 3 s).
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, "the zombie never got going: " + logs()
                assert zombie.returncode is None, logs()
                sends = await slow.control.sends()
                if len(sends) >= 8 and 1.0 <= time.time() - sends[-1]["at"] <= 2.0:
                    break
                await asyncio.sleep(0.05)
            zombie.send_signal(signal.SIGSTOP)
            paused_at = time.monotonic()
            sent_before_pause = len(await slow.control.sends())
            committed_before_pause = outcomes.count

            taker = await start_sender(taker_env, taker_log)
            await outcomes.wait_for(TOTAL, timeout=90)  # after the group has expelled the zombie
            taken_over_after = time.monotonic() - paused_at
            await asyncio.sleep(max(0.0, SESSION + 2.0 - taken_over_after))
            resumed_wall = time.time()
            zombie.send_signal(signal.SIGCONT)
            paused_for = time.monotonic() - paused_at
            code = await asyncio.wait_for(zombie.wait(), timeout=40)
            await asyncio.sleep(2.0)  # a stale transaction committed late would show up now
            taker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(taker.wait(), timeout=30) == 0, logs()
        finally:
            for process in (zombie, taker):
                if process is not None and process.returncode is None:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                    await process.wait()
        zombie_sends = await slow.control.sends()
        taker_sends = await fast.control.sends(phone_number_id=NUMBER)

    after_resume = [s for s in zombie_sends if s["at"] >= resumed_wall]
    fenced = [line for line in zombie_log.read_text().splitlines() if "Fenced" in line or "fenced" in line]
    print(f"\nzombie: paused {paused_for:.1f} s (session timeout {SESSION:.0f} s) after {sent_before_pause} calls, "
          f"{committed_before_pause} outcomes committed; the other replica had all {TOTAL} committed "
          f"{taken_over_after:.1f} s into the pause; after SIGCONT: {len(after_resume)} calls from the zombie, "
          f"exit code {code}; requests it had sent that the other replica sent again: "
          f"{len({callback_request_id(s) for s in zombie_sends})}")
    print("zombie: " + (fenced[0][:300] if fenced else "(no 'fenced' line in its log)"))

    per_request = outcomes.per_request()
    assert set(per_request) == {r.request_id for r in requests}
    assert set(per_request.values()) == {1}, Counter(per_request.values())  # nothing of the zombie's committed
    assert committed_before_pause == 0
    assert after_resume == [], after_resume  # no Graph call after it resumed
    assert len(zombie_sends) == sent_before_pause
    assert {callback_request_id(s) for s in taker_sends} == {r.request_id for r in requests}
    assert code != 0, logs()  # fenced: it stops rather than carry on with partitions it lost
    assert fenced, logs()
