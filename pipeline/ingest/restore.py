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

import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.config import Settings
from pipeline.contracts import DeliveryStatus
from pipeline.ingest.state import MessageState
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
    """The messages of one partition. States are kept encoded (their `status.state` value): a dict of
    bytes is invisible to the garbage collector, whereas hundreds of thousands of small objects made
    each full collection pause the event loop for a few hundred milliseconds."""

    states: dict[str, bytes] = field(default_factory=dict)
    touched: dict[str, int] = field(default_factory=dict)  # wamid → updated_ms, for retention
    # Events already on status.events from offsets ≥ the committed one; emptied once passed.
    emitted: set[tuple[str, DeliveryStatus]] = field(default_factory=set)
    emitted_until: int = -1  # highest source offset among `emitted`
    rolled_back: int = 0  # states that held uncommitted work (for the restore's log line)

    def get(self, wamid: str) -> MessageState | None:
        raw = self.states.get(wamid)
        return MessageState.from_json(raw) if raw is not None else None

    def put(self, wamid: str, state: MessageState) -> None:
        self.states[wamid] = state.to_json()
        self.touched[wamid] = state.updated_ms

    def forget(self, wamid: str) -> None:
        self.states.pop(wamid, None)
        self.touched.pop(wamid, None)


class Restorer:
    def __init__(self, consumer: AIOKafkaConsumer, topics: TopicCatalog, tail_window: int = 2000) -> None:
        self.consumer = consumer  # no group: assigned by hand, never commits
        self.topics = topics
        self.tail_window = tail_window

    async def restore(self, partition: int, committed: int) -> PartitionState:
        part = PartitionState()
        await self._read_states(TopicPartition(self.topics.status_state, partition), committed, part)
        await self._read_emitted(TopicPartition(self.topics.status_events, partition), committed, part)
        return part

    async def _read_states(self, tp: TopicPartition, committed: int, part: PartitionState) -> None:
        start = (await self.consumer.beginning_offsets([tp]))[tp]
        end = (await self.consumer.end_offsets([tp]))[tp]
        latest: dict[str, bytes | None] = {}
        for record in await self._read(tp, start, end):
            latest[record.key.decode()] = record.value  # None: a tombstone
        for key, raw in latest.items():
            if raw is None:
                continue
            state = MessageState.from_json(raw)
            kept = state.rolled_back(committed)
            if kept is not state:
                part.rolled_back += 1
            if kept is state:
                part.states[key] = raw
                part.touched[key] = state.updated_ms
            elif kept is not None:
                part.put(key, kept)

    async def _read_emitted(self, tp: TopicPartition, committed: int, part: PartitionState) -> None:
        begin = (await self.consumer.beginning_offsets([tp]))[tp]
        end = (await self.consumer.end_offsets([tp]))[tp]
        window = self.tail_window
        while True:
            start = max(begin, end - window)
            records = await self._read(tp, start, end)
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

    async def _read(self, tp: TopicPartition, start: int, end: int) -> list[Any]:
        if end <= start:
            return []
        self.consumer.assign([tp])
        self.consumer.seek(tp, start)
        records: list[Any] = []
        deadline = time.monotonic() + _STALL_SECONDS
        while await self.consumer.position(tp) < end:
            batch = await self.consumer.getmany(tp, timeout_ms=500)
            fetched = batch.get(tp, [])
            if fetched:
                deadline = time.monotonic() + _STALL_SECONDS
            elif time.monotonic() > deadline:
                raise RestoreError(f"reading {tp.topic}[{tp.partition}] stalled before offset {end}")
            records.extend(r for r in fetched if r.offset < end)
        return records


def _source_offset(record: Any) -> int:
    value = dict(getattr(record, "headers", None) or ()).get(SOURCE_OFFSET)
    return int(value) if value is not None else -1
