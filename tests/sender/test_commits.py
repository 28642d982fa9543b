"""The transactional committer's gate: no outcome lands in a transaction whose offsets miss it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.sender.commits import TransactionalCommitter


class FakeTransactionalProducer:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.in_transaction = False

    async def begin_transaction(self) -> None:
        assert not self.in_transaction
        self.in_transaction = True
        self.log.append("begin")

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[Any]:
        assert self.in_transaction, "sent outside a transaction"
        self.log.append(f"send {value.decode()}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, future.set_result, _Meta())
        return future

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.log.append("offsets")
        await asyncio.sleep(0.01)

    async def commit_transaction(self) -> None:
        self.log.append("commit")
        await asyncio.sleep(0.01)
        self.in_transaction = False


class _Meta:
    partition = 0
    offset = 0


async def test_publishes_wait_for_the_commit_and_the_commit_waits_for_publishes() -> None:
    producer = FakeTransactionalProducer()
    committer = TransactionalCommitter(producer, "g", "t.send.requests")  # type: ignore[arg-type]
    await committer.start()
    sink = committer.sink()
    done: list[int] = []

    async def publish(n: int) -> None:
        await sink.publish("t.send.results", b"k", str(n).encode(), [])
        done.append(n)  # what the engine does right after: mark the offset done

    first = [asyncio.create_task(publish(n)) for n in range(5)]
    await asyncio.sleep(0)  # they are in flight
    seen_at_commit: list[int] = []

    def offsets() -> dict[int, tuple[int, str]]:
        seen_at_commit.extend(done)
        return {0: (len(done), "")}

    commit = asyncio.create_task(committer.commit(offsets))
    await asyncio.sleep(0)
    later = [asyncio.create_task(publish(n)) for n in range(5, 8)]  # arrive during the commit
    assert await commit == {0: (5, "")}
    await asyncio.gather(*first, *later)
    assert sorted(seen_at_commit) == [0, 1, 2, 3, 4]  # every publish of the transaction was covered
    log = producer.log
    cut = log.index("commit")
    assert all(f"send {n}" in log[:cut] for n in range(5))
    assert all(f"send {n}" in log[cut:] for n in range(5, 8))  # the next transaction
    assert log[cut + 1] == "begin"


async def test_concurrent_commits_run_one_at_a_time() -> None:
    producer = FakeTransactionalProducer()
    committer = TransactionalCommitter(producer, "g", "t")  # type: ignore[arg-type]
    await committer.start()
    await asyncio.gather(committer.commit(lambda: {0: (1, "")}), committer.commit(lambda: {1: (1, "")}))
    assert producer.log == ["begin", "offsets", "commit", "begin", "offsets", "commit", "begin"]


class FakePartitionProducer(FakeTransactionalProducer):
    def __init__(self, partition: int) -> None:
        super().__init__()
        self.partition = partition
        self.offsets: list[Any] = []

    async def start(self) -> None:  # init_transactions: fences the partition's previous owner
        self.log.append("start")

    async def stop(self) -> None:
        self.log.append("stop")

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.offsets.append({tp.partition: entry for tp, entry in offsets.items()})
        await super().send_offsets_to_transaction(offsets, group_id)


async def test_each_input_partition_commits_its_outcomes_and_offsets_in_its_own_producers_transaction() -> None:
    from aiokafka.errors import IllegalStateError

    from pipeline.sender.commits import transactional_id

    producers: dict[int, FakePartitionProducer] = {}

    def factory(partition: int) -> Any:
        producers[partition] = FakePartitionProducer(partition)
        return producers[partition]

    committer = TransactionalCommitter(factory, "g", "t.send.requests")
    await committer.start()
    await committer.assign([0, 1])
    sink = committer.sink()
    await sink.publish("t.send.results", b"k", b"a", [], source_partition=0)
    await sink.publish("t.send.results", b"k", b"b", [], source_partition=1)
    await sink.publish("t.send.results", b"k", b"c", [], source_partition=1)
    assert await committer.commit(lambda: {0: (1, ""), 1: (2, "")}) == {0: (1, ""), 1: (2, "")}
    assert producers[0].log == ["start", "begin", "send a", "offsets", "commit", "begin"]
    assert producers[1].log == ["start", "begin", "send b", "send c", "offsets", "commit", "begin"]
    assert producers[0].offsets == [{0: (1, "")}]
    assert producers[1].offsets == [{1: (2, "")}]
    # A partition with nothing new commits nothing; a released one's producer is gone (stopped).
    await sink.publish("t.send.results", b"k", b"d", [], source_partition=1)
    await committer.commit(lambda: {1: (3, "")})
    assert producers[0].log[-1] == "begin"
    await committer.release([0])
    assert producers[0].log[-1] == "stop"
    with pytest.raises(IllegalStateError):  # a partition this replica no longer holds
        await sink.publish("t.send.results", b"k", b"e", [], source_partition=0)
    await committer.close()
    assert producers[1].log[-1] == "stop"
    assert transactional_id("g", "t.send.requests", 4) == "g-t.send.requests-4"

