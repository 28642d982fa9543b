"""Rebuild one partition's dedupe state from Kafka when this process takes the partition over.

    restorer = Restorer(consumer_without_group, topics)
    part = await restorer.restore(partition=2, committed=1041)
    part.get("wamid…")          # MessageState as of the last committed status.updates offset
    part.emitted                # {("wamid…", DELIVERED), …}: events already written past that offset

Two reads, both of the same partition number (status.updates, status.state and status.events are
co-partitioned: same key, same partition count, and the processor writes to the partition it reads):

1. `status.state` from the beginning (compacted: one record per message, tombstones for expired
   ones), then every entry made from an offset ≥ `committed` is undone — that work is replayed.
2. The tail of `status.events` back to the first event made from an offset < `committed`: the events
   the replayed work already wrote before the crash. The replay skips exactly those, so a crash at
   any point between writing events, writing state and committing loses and duplicates nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.config import Settings
from pipeline.contracts import DeliveryStatus
from pipeline.ingest.state import MessageState
from pipeline.ingest.store import Change, StateStore
from pipeline.topics import TopicCatalog

SOURCE_OFFSET = "source-offset"  # header on status.events: the status.updates offset it came from
STATUS = "status"  # header on status.events: the event's status (read back without parsing JSON)
_STALL_SECONDS = 30.0


class RestoreError(RuntimeError):
    pass


def new_restore_consumer(settings: Settings) -> AIOKafkaConsumer:
    """No group (assigned by hand, never commits), and short fetch waits: a restore reads one partition
    to its end and then moves on, so a fetch long-polling at the end only delays the next one."""
    return AIOKafkaConsumer(
        **settings.kafka.client_kwargs(),
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


@dataclass
class PartitionState:
    """The messages of one partition: on disk in `store`, with this batch's changes in `pending` until
    their changelog records are acknowledged (`persist`). States are kept encoded (their
    `status.state` value)."""

    store: StateStore = field(default_factory=lambda: StateStore(None))
    pending: dict[str, Change] = field(default_factory=dict)  # changed since the last `persist`
    # Events already on status.events from offsets ≥ the committed one; emptied once passed.
    emitted: set[tuple[str, DeliveryStatus]] = field(default_factory=set)
    emitted_until: int = -1  # highest source offset among `emitted`
    rolled_back: int = 0  # states that held uncommitted work (for the restore's log line)
    replayed: int = 0  # status.state records read by the restore (the tail after the checkpoint)

    def get(self, wamid: str) -> MessageState | None:
        change = self.pending.get(wamid)
        raw = change[1] if change is not None else self.store.get(wamid)
        return MessageState.from_json(raw) if raw is not None else None

    def value(self, wamid: str) -> bytes | None:
        """The encoded value this batch changed `wamid` to (None: forgotten)."""
        return self.pending[wamid][1]

    def put(self, wamid: str, state: MessageState) -> None:
        self.pending[wamid] = _change(wamid, state, state.to_json())

    def forget(self, wamid: str) -> None:
        self.pending[wamid] = (wamid, None, 0, 0)

    def expired(self, cutoff_ms: int) -> list[str]:
        return [w for w in self.store.expired(cutoff_ms) if w not in self.pending]

    def persist(self, checkpoint: int | None) -> None:
        """After the changelog acknowledged the pending records: write them, with the checkpoint."""
        if self.pending or checkpoint is not None:
            self.store.write(self.pending.values(), checkpoint)
        self.pending.clear()

    def close(self) -> None:
        self.pending.clear()
        self.store.close()


class Restorer:
    """`state_dir` None: a temporary store per assignment, rebuilt from the whole changelog each time."""

    def __init__(self, consumer: AIOKafkaConsumer, topics: TopicCatalog, tail_window: int = 2000,
                 state_dir: Path | None = None, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.consumer = consumer  # no group: assigned by hand, never commits
        self.topics = topics
        self.tail_window = tail_window
        self.state_dir = state_dir
        self.cache_bytes = cache_bytes
        # partition → (changelog records read, records to read): what /readyz reports while it runs
        self.progress: dict[int, tuple[int, int]] = {}

    async def restore(self, partition: int, committed: int) -> PartitionState:
        part = PartitionState(StateStore.open(self.state_dir, partition, self.cache_bytes))
        try:
            await self._read_states(TopicPartition(self.topics.status_state, partition), committed, part)
            await self._read_emitted(TopicPartition(self.topics.status_events, partition), committed, part)
        except BaseException:
            part.close()
            raise
        finally:
            self.progress.pop(partition, None)
        return part

    async def _read_states(self, tp: TopicPartition, committed: int, part: PartitionState) -> None:
        """Bring the store up to the changelog's end (only the tail after its checkpoint when that is
        valid), then undo the work from offsets ≥ `committed`: it is replayed."""
        begin = (await self.consumer.beginning_offsets([tp]))[tp]
        end = (await self.consumer.end_offsets([tp]))[tp]
        checkpoint = part.store.checkpoint()
        if checkpoint is None or not begin <= checkpoint <= end:
            # No store, or one from another life of the topic (recreated, or truncated past it).
            part.store.clear()
            checkpoint = begin
        total = end - checkpoint
        self.progress[tp.partition] = (0, total)
        async for records in self._chunks(tp, checkpoint, end):
            latest: dict[str, Change] = {}
            for record in records:
                if record.key is None:
                    continue
                wamid = record.key.decode()
                if record.value is None:
                    latest[wamid] = (wamid, None, 0, 0)
                else:
                    latest[wamid] = _change(wamid, MessageState.from_json(record.value), record.value)
            part.store.write(latest.values(), records[-1].offset + 1)
            part.replayed += len(records)
            self.progress[tp.partition] = (part.replayed, total)
            await asyncio.sleep(0)  # the receiver and the ops routes share the loop
        if part.store.checkpoint() != end:
            part.store.write((), end)  # past compacted-away offsets at the end
        for wamid, raw in part.store.holding_from(committed):
            state = MessageState.from_json(raw)
            kept = state.rolled_back(committed)
            if kept is state:
                continue
            part.rolled_back += 1
            if kept is None:
                part.forget(wamid)
            else:
                part.put(wamid, kept)
        # The undone states are the changelog's state as of `committed`: kept locally (the replay
        # writes the same values again), the checkpoint unchanged.
        part.persist(None)

    async def _read_emitted(self, tp: TopicPartition, committed: int, part: PartitionState) -> None:
        begin = (await self.consumer.beginning_offsets([tp]))[tp]
        end = (await self.consumer.end_offsets([tp]))[tp]
        window = self.tail_window
        while True:
            start = max(begin, end - window)
            records = [r async for chunk in self._chunks(tp, start, end) for r in chunk]
            # Events are appended in source-offset order, so one older than `committed` at the start
            # of the window means the window holds every newer one.
            if start == begin or (records and _source_offset(records[0]) < committed):
                break
            window *= 4
        for record in records:
            source = _source_offset(record)
            if source >= committed:
                status = dict(record.headers or ()).get(STATUS)
                if status is not None and record.key is not None:
                    part.emitted.add((record.key.decode(), DeliveryStatus(status.decode())))
                    part.emitted_until = max(part.emitted_until, source)

    async def _chunks(self, tp: TopicPartition, start: int, end: int) -> AsyncIterator[list[Any]]:
        """The records of [start, end) as fetched, a batch at a time (never all of them in memory)."""
        if end <= start:
            return
        self.consumer.assign([tp])
        self.consumer.seek(tp, start)
        deadline = time.monotonic() + _STALL_SECONDS
        while await self.consumer.position(tp) < end:
            batch = await self.consumer.getmany(tp, timeout_ms=500)
            fetched = [r for r in batch.get(tp, []) if r.offset < end]
            if fetched:
                deadline = time.monotonic() + _STALL_SECONDS
                yield fetched
            elif time.monotonic() > deadline:
                raise RestoreError(f"reading {tp.topic}[{tp.partition}] stalled before offset {end}")


def _change(wamid: str, state: MessageState, raw: bytes) -> Change:
    """The store's row for `state`: with its highest source offset, which a restore's rollback looks up."""
    top = max((seen.source_offset for seen in state.statuses.values()), default=-1)
    return (wamid, raw, state.updated_ms, top)


def _source_offset(record: Any) -> int:
    value = dict(getattr(record, "headers", None) or ()).get(SOURCE_OFFSET)
    return int(value) if value is not None else -1
