"""The table of owned partitions, and the task counter revocation waits on."""

from __future__ import annotations

import asyncio
import time

from pipeline.contracts import SendRequest
from pipeline.sender.partitions import Partitions
from pipeline.sender.tasks import PartitionTasks
from pipeline.sender.work import Origin, Work


def test_work_is_its_partitions_only_while_the_tracker_it_was_taken_with_is() -> None:
    owned = Partitions()
    owned.assign(0, 10, None)
    tracker = owned.tracker(0)
    assert tracker is not None
    request = SendRequest(to="+16505551234", message={"type": "text", "text": {"body": "hi"}})
    work = Work(request, "1", Origin("t", 0, 10, None, (), b""), received=0.0, tracker=tracker)
    assert owned.owns(work)
    assert owned.start_revoking({0, 5}) == {0}
    assert not owned.owns(work)  # no new send or requeue once a revocation starts
    assert owned.holds(0, tracker)  # but outcomes already being published still land
    assert owned.offsets_to_commit() == {}  # a partition being revoked is committed by its final offsets
    assert not tracker.already_done(10)
    tracker.done(10)
    assert owned.release({0}) == {0: (11, "")}
    assert not owned.holds(0, tracker)
    assert owned.final_offsets({0}) == {0: (11, "")}
    assert owned.final_offsets({0}) == {}  # asked once
    owned.assign(0, 11, None)
    assert not owned.owns(work)  # assigned again: a new tracker, old work cannot mark its offsets


async def test_revocation_waits_for_a_partitions_tasks_and_failures_are_reported() -> None:
    failures: list[tuple[int, BaseException]] = []
    tasks = PartitionTasks(lambda partition, error: failures.append((partition, error)), clock=time.monotonic)

    async def boom() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("bug")

    tasks.spawn(1, boom())
    tasks.spawn(2, asyncio.sleep(10))
    started = time.monotonic()
    await tasks.wait_idle({1}, grace=5.0)
    assert time.monotonic() - started < 1.0
    assert [p for p, _ in failures] == [1]
    await tasks.wait_idle({2}, grace=0.05)  # gives up after the grace
    await tasks.cancel()
