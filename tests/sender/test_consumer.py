"""The fetch loop's backpressure without Kafka: an in-memory consumer injected through `consumer_factory`.

The same policy runs against the real broker in test_integration.py and test_crash.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from aiokafka import TopicPartition

from pipeline.config import Settings
from pipeline.sender.consumer import KafkaSource
from tests.sender.fakes import FakeMeta, Record, request_bytes
from tests.sender.test_engine import HOME, NUMBER, PARTITIONS, REQUESTS, Harness


class _Coordinator:
    async def fetch_committed_offsets(self, partitions: Any) -> dict[Any, Any]:
        return {}  # nothing committed yet: every partition starts at 0


class FakeConsumer:
    """aiokafka's consumer as the source uses it: per-partition logs, pause/resume, getmany, commit."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.logs: dict[int, list[Record]] = {p: [] for p in range(partitions)}
        self.positions = dict.fromkeys(range(partitions), 0)
        self.paused: set[TopicPartition] = set()
        self.events: list[tuple[str, int]] = []
        self.getmany_while_paused = 0
        self.max_batch = 0
        self.commits: list[dict[TopicPartition, tuple[int, str]]] = []
        self._assigned: set[TopicPartition] = set()
        self._listener: Any = None
        self._coordinator = _Coordinator()

    def append(self, partition: int, value: bytes) -> None:
        log = self.logs[partition]
        log.append(Record(self.topic, partition, len(log), NUMBER.encode(), value))

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self._listener = listener

    async def start(self) -> None:
        self._assigned = {TopicPartition(self.topic, p) for p in self.logs}
        await self._listener.on_partitions_assigned(set(self._assigned))

    async def stop(self) -> None:
        revoked, self._assigned = self._assigned, set()
        await self._listener.on_partitions_revoked(revoked)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.logs)

    def pause(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            if tp not in self.paused:
                self.events.append(("pause", tp.partition))
            self.paused.add(tp)

    def resume(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.paused.discard(tp)
            self.events.append(("resume", tp.partition))

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        if self.paused:
            self.getmany_while_paused += 1  # still polled: the consumer stays in its group
        out: dict[TopicPartition, list[Record]] = {}
        left = max_records
        for tp in sorted(self._assigned - self.paused, key=lambda t: t.partition):
            log, start = self.logs[tp.partition], self.positions[tp.partition]
            batch = log[start:start + left]
            if batch:
                out[tp] = batch
                self.positions[tp.partition] += len(batch)
                left -= len(batch)
        self.max_batch = max(self.max_batch, sum(len(b) for b in out.values()))
        if not out:
            await asyncio.sleep(timeout_ms / 1000)
        return out

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        self.commits.append(offsets)


async def test_a_full_partition_is_paused_polled_on_and_resumed_below_80_percent_of_its_share() -> None:
    h = Harness(FakeMeta(latency=0.3), max_buffered=30, commit_interval_seconds=0.1)
    fake = FakeConsumer(REQUESTS, PARTITIONS)
    for n in range(90):
        fake.append(HOME, request_bytes(f"+1650555{n:04d}", f"bp-{n:03d}"))
    settings: Settings = h.settings
    source = KafkaSource(settings, h.engine, consumer_factory=lambda s: fake)
    source.topic = REQUESTS
    stop = asyncio.Event()
    await source.start()
    running = asyncio.create_task(source.run(stop))
    most_held = 0
    deadline = time.monotonic() + 30
    while len(h.results()) < 90:
        most_held = max(most_held, h.engine.scheduler.buffered)
        assert time.monotonic() < deadline, f"{len(h.results())} of 90 sent"
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(running, 10)
    share = 30 // PARTITIONS
    print(f"\nbackpressure: most held {most_held} (max_buffered 30, share {share}); events {fake.events[:6]}…; "
          f"getmany while paused: {fake.getmany_while_paused}")
    assert most_held <= 30  # never more than max_buffered in memory
    assert fake.max_batch <= 30  # a fetch never brings more than there is room for
    home = [e for e in fake.events if e[1] == HOME]
    assert home[:2] == [("pause", HOME), ("resume", HOME)]  # paused when full, resumed as it drained
    assert fake.getmany_while_paused > 0
    final = {tp.partition: entry for commit in fake.commits for tp, entry in commit.items()}
    assert final[HOME][0] == 90  # everything done is committed


async def test_the_loop_lets_other_tasks_run_between_two_fetches_that_did_not_wait() -> None:
    # aiokafka's getmany returns at once while records are buffered, as the fake's does: the fetch
    # loop itself must yield, or sends stall while it takes batch after batch.
    h = Harness(FakeMeta(latency=0.0), max_buffered=10_000, commit_interval_seconds=0.1)
    fake = FakeConsumer(REQUESTS, PARTITIONS)
    for n in range(1_000):
        fake.append(HOME, request_bytes(f"+1650555{n:04d}", f"yield-{n:04d}"))
    ticks = 0
    seen: list[int] = []
    getmany = fake.getmany

    async def counting(timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        seen.append(ticks)
        return await getmany(timeout_ms, max_records)

    fake.getmany = counting  # type: ignore[method-assign]

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    source = KafkaSource(h.settings, h.engine, consumer_factory=lambda s: fake)
    source.topic = REQUESTS
    stop = asyncio.Event()
    await source.start()
    ticking = asyncio.create_task(ticker())
    running = asyncio.create_task(source.run(stop))
    while fake.positions[HOME] < 1_000:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(running, 10)
    ticking.cancel()
    busy = [b - a for a, b in itertools.pairwise(seen)][:5]  # the fetches that found 200 records each
    assert len(seen) >= 6
    assert all(turns >= 1 for turns in busy), busy


async def test_the_membership_lease_lapses_a_heartbeat_interval_before_the_session_would() -> None:
    from pipeline.sender.consumer import MembershipLease

    class Coordinator:
        answer = True

        async def _do_heartbeat(self) -> bool:
            return self.answer

    now = [100.0]
    lease = MembershipLease(10.0, 3.0, clock=lambda: now[0])
    assert lease.held()  # nothing watched (an in-memory consumer): always held
    coordinator = Coordinator()
    lease.watch(coordinator)
    assert lease.valid_for == 7.0
    now[0] = 106.9
    assert lease.held()
    now[0] = 107.1
    assert not lease.held()  # a paused process wakes up here: nothing is dispatched
    coordinator.answer = False  # the group no longer knows this member
    assert not await coordinator._do_heartbeat()
    assert not lease.held()
    coordinator.answer = True
    assert await coordinator._do_heartbeat()  # accepted: sent at 107.1, held until 114.1
    now[0] = 114.0
    assert lease.held()
