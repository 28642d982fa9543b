"""Fetch `send.requests` into the engine, with backpressure, explicit commits and rebalances.

    source = KafkaSource(settings, engine)                  # consumer_factory=… for a fake in tests
    await source.start()
    await source.run(stop)        # until `stop` is set; then drains (grace), commits and returns

A raw aiokafka consumer rather than a FastStream subscriber: offsets are committed by this class
only, explicitly, as `(lowest offset not done, metadata listing the done ones above it)`, which
FastStream's `msg.ack()` (it commits everything fetched) cannot express.

* **Backpressure**: a partition is paused while it holds its share of `max_buffered` requests, or
  while its done-offset map no longer fits the commit metadata; `getmany` keeps being called, so
  the consumer stays in its group however long a number is blocked.
* **Commits** every `commit_interval_seconds`, only of partitions whose position or map changed,
  through a `Committer` (commits.py: in the outcomes' transaction, or by the consumer).
* **Rebalance**: on revocation the engine finishes what is in flight (up to
  `rebalance_grace_seconds`) and the final positions are committed before the partitions go; on
  assignment the committer first fences the partitions' previous owner (commits.py), then the
  committed offset and its metadata say where to start and what to skip.
* **Membership lease**: `in_group()` is true while the last heartbeat the group coordinator accepted
  was sent less than `session_timeout - heartbeat_interval` ago (or the group was just joined). The
  engine dispatches nothing while it is false: a replica paused or cut off past its session timeout
  may have lost its partitions without having heard so yet, and must not send their requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from pipeline.config import Settings
from pipeline.observability import get_logger
from pipeline.sender.commits import Committer, ConsumerCommitter, Offsets
from pipeline.sender.engine import Engine
from pipeline.topics import TopicCatalog

log = get_logger(__name__)

_RESUME_BELOW = 0.8  # resume a paused partition once it holds less than 80 % of its share
_FETCH_BATCH = 50  # records per getmany: a slice of intake short enough that sends keep their pace


def kafka_consumer(settings: Settings) -> Any:
    """The real consumer: aiokafka, explicit commits, read_committed (the default `ConsumerFactory`)."""
    return AIOKafkaConsumer(
        **settings.kafka.client_kwargs(),
        group_id=settings.sender.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Re-routed requests are written in the sender's transactions: skip aborted ones.
        isolation_level="read_committed",
        session_timeout_ms=int(settings.sender.session_timeout_seconds * 1000),
        heartbeat_interval_ms=_heartbeat_interval_ms(settings),
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


def _heartbeat_interval_ms(settings: Settings) -> int:
    return min(3000, int(settings.sender.session_timeout_seconds * 1000) // 3)


class MembershipLease:
    """Whether this member can still be sure the group has not expelled it (see the module docstring).

    The broker expires a member `session_timeout` after the last heartbeat it received, which is later
    than when that heartbeat was sent: counting from the send time is on the safe side, and one
    heartbeat interval less than the session timeout leaves room for the calls just being written.
    """

    def __init__(self, session_timeout: float, heartbeat_interval: float, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.valid_for = max(heartbeat_interval, session_timeout - heartbeat_interval)
        self._clock = clock
        self._since = clock()
        self._watched = False  # nothing to watch (an in-memory consumer): always held

    def renew(self, at: float | None = None) -> None:
        self._since = max(self._since, self._clock() if at is None else at)

    def held(self) -> bool:
        return not self._watched or self._clock() - self._since < self.valid_for

    def watch(self, coordinator: Any) -> None:
        """Renew on every heartbeat aiokafka's group coordinator gets accepted (it keeps no timestamp)."""
        beat = coordinator._do_heartbeat

        async def heartbeat() -> bool:
            sent = self._clock()
            ok = bool(await beat())
            if ok:
                self.renew(sent)
            return ok

        coordinator._do_heartbeat = heartbeat
        self._watched = True


# Builds the consumer from the settings; tests pass an in-memory fake with aiokafka's methods
# (subscribe, start, stop, assignment, pause, resume, getmany, commit, partitions_for_topic).
ConsumerFactory = Callable[[Settings], Any]


class KafkaSource:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        committer: Committer | None = None,
        *,
        consumer_factory: ConsumerFactory = kafka_consumer,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self.topic = TopicCatalog(settings.kafka).send_requests
        self.consumer = consumer_factory(settings)
        self.committer: Committer = committer or ConsumerCommitter(self.consumer, self.topic)
        self.lease = MembershipLease(settings.sender.session_timeout_seconds,
                                     _heartbeat_interval_ms(settings) / 1000)
        engine.in_group = self.lease.held
        self._paused: set[TopicPartition] = set()
        self._assigning: set[int] = set()  # partitions whose assignment is being set up (on_assigned)
        self._held: list[Any] = []  # their records fetched meanwhile, in fetch order
        self._fatal: BaseException | None = None  # raised by the fetch loop (listener errors are swallowed)

    async def start(self) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self.consumer.start()
        coordinator = getattr(self.consumer, "_coordinator", None)
        if hasattr(coordinator, "_do_heartbeat"):  # in-memory fakes have no heartbeats: always held
            self.lease.watch(coordinator)

    def ready(self) -> bool:
        return bool(self.consumer.assignment())

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch until `stop` is set, then hand everything back: drain, commit, leave the group."""
        stop_commits = asyncio.Event()
        committer = asyncio.create_task(self._commit_every(self._settings.sender.commit_interval_seconds, stop_commits))
        sweeper = asyncio.create_task(self._engine.run_sweeper())
        try:
            while not stop.is_set():
                if committer.done():
                    committer.result()  # a failed commit is fatal (commits.py says why): raise it
                if self._fatal is not None:
                    raise self._fatal
                if self._engine.fatal is not None:
                    raise self._engine.fatal  # e.g. the producer was fenced: restart from the last commit
                self._apply_backpressure()
                # Paused partitions return nothing, so `room` bounds what one fetch can add. Small
                # batches: taking 5,000 records in one go stalled the event loop (and sending) ~200 ms.
                room = max(1, min(self._engine.room, _FETCH_BATCH))
                batches = await self.consumer.getmany(timeout_ms=100, max_records=room)
                for records in batches.values():
                    for record in records:
                        if record.partition in self._assigning:
                            self._held.append(record)
                        else:
                            self._engine.intake(record)
                # `getmany` returns without suspending while it has records buffered: without this,
                # a resumed partition's fetch (~1,500 records) was taken batch after batch in one go,
                # a ~60 ms stall in sending every 1.5 s (bench/sender.py, BENCHMARKS.md). Slices of
                # 200 still came with event-loop lags of 40-70 ms, four or five per refill, on a busy
                # 2-core machine; with 50, a refill's intake goes out between sends (sustained
                # 951-954/s against 922-938 in the rounds that fetch while they send).
                await asyncio.sleep(0)
        finally:
            stop_commits.set()  # not cancel(): a commit half-done would leave the transaction unusable
            sweeper.cancel()
            await asyncio.gather(committer, sweeper, return_exceptions=True)
            await self._shutdown()

    async def _shutdown(self) -> None:
        assigned = [tp for tp in self.consumer.assignment() if tp.topic == self.topic]
        self.consumer.pause(*assigned)
        final = await self._engine.close(self._settings.sender.shutdown_grace_seconds)
        await self._commit(lambda: self._engine.owned.final_offsets(final), final=True)
        # Leaving the group runs the revocation listener again; the engine has nothing left by then.
        await self.consumer.stop()

    # --- backpressure -------------------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        assigned = [tp for tp in self.consumer.assignment() if tp.topic == self.topic]
        if not assigned:
            return
        engine = self._engine
        share = max(1, engine.scheduler.max_buffered // len(assigned))
        full = engine.room == 0
        for tp in assigned:
            held = engine.owned.outstanding(tp.partition)
            paused = tp in self._paused
            if not paused and (full or held >= share or engine.owned.overflowing(tp.partition)):
                self.consumer.pause(tp)
                self._paused.add(tp)
                log.info("partition_paused", partition=tp.partition, held=held, share=share,
                         metadata_full=engine.owned.overflowing(tp.partition))
            elif paused and not full and held < share * _RESUME_BELOW and not engine.owned.overflowing(tp.partition):
                self.consumer.resume(tp)
                self._paused.discard(tp)
                log.info("partition_resumed", partition=tp.partition, held=held)

    # --- commits ------------------------------------------------------------------------------------

    async def _commit_every(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if not stop.is_set():
                await self._commit(self._engine.owned.offsets_to_commit)

    async def _commit(self, offsets: Callable[[], Offsets], *, final: bool = False) -> None:
        committed = await self.committer.commit(offsets, final=final)
        self._engine.owned.committed(committed)

    # --- rebalance ----------------------------------------------------------------------------------

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = [tp.partition for tp in revoked if tp.topic == self.topic]
        self._paused.difference_update(revoked)
        if not partitions:
            return
        await self._engine.revoke(partitions, self._settings.sender.rebalance_grace_seconds)
        try:
            await self._commit(lambda: self._engine.owned.final_offsets(partitions))
            await self.committer.release(partitions)
        except Exception as exc:
            self._fatal = exc
            raise
        log.info("partitions_revoked", partitions=sorted(partitions))

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.lease.renew()  # the group was just joined
        mine = [tp for tp in assigned if tp.topic == self.topic]
        count = self.consumer.partitions_for_topic(self.topic)
        if count:
            self._engine.partitions = len(count)
        # aiokafka may hand out records of these partitions before this returns: they are held
        # until the engine tracks the partitions (it would drop them as not its own).
        self._assigning.update(tp.partition for tp in mine)
        try:
            # First: fence the previous owners (their open transactions end now, committed or
            # aborted), so that the offsets read next are the last ones anybody can commit.
            await self.committer.assign([tp.partition for tp in mine])
        except Exception as exc:
            self._assigning.clear()
            self._held.clear()
            self._fatal = exc
            raise
        # The public `committed()` drops the metadata, which holds the done offsets we must skip.
        committed = await self.consumer._coordinator.fetch_committed_offsets(mine) if mine else {}
        for tp in mine:
            entry = committed.get(tp)
            offset = entry.offset if entry is not None and entry.offset >= 0 else None
            self._engine.assign(tp.partition, offset, entry.metadata if entry is not None else None)
        self._assigning.clear()
        held, self._held = self._held, []
        for record in held:
            self._engine.intake(record)
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in mine),
                 partition_count=self._engine.partitions)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._source.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._source.on_assigned(assigned)
