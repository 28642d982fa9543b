"""Committed offsets of the notify group: per partition, one past the records whose callbacks all ended.

    tracker = OffsetTracker()
    source = tracker.track(record)           # a Source leased to this process's partition
    tracker.finish(source)                    # its deliveries ended (delivered or dead-lettered)
    tracker.due()                             # {TopicPartition: offset} that moved since the last commit
    tracker.committed(offsets)                # after the consumer committed them
    tracker.revoke(partitions)                # positions to commit now; later finishes are ignored

Bookkeeping only: committing is the caller's (service.py), so this is tested without Kafka.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition

from pipeline.notify.deliveries import Lease, Source
from pipeline.notify.watermark import Watermark


class OffsetTracker:
    def __init__(self) -> None:
        self._marks: dict[TopicPartition, Watermark] = {}
        self._leases: dict[TopicPartition, Lease] = {}
        self._committed: dict[TopicPartition, int] = {}

    def track(self, record: Any) -> Source:
        tp = TopicPartition(record.topic, record.partition)
        mark = self._marks.get(tp)
        if mark is None:
            mark = self._marks[tp] = Watermark()
            self._leases[tp] = Lease()
        mark.track(record.offset)
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers} if record.headers else {}
        return Source(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp / 1000 if record.timestamp and record.timestamp > 0 else 0.0,
            key=record.key,
            value=record.value or b"",
            headers=headers,
            lease=self._leases[tp],
        )

    def finish(self, source: Source) -> None:
        if not source.lease.alive:
            return  # revoked: the new owner replays it
        self._marks[TopicPartition(source.topic, source.partition)].finish(source.offset)

    def due(self) -> dict[TopicPartition, int]:
        offsets = {}
        for tp, mark in self._marks.items():
            position = mark.position()
            if position is not None and position != self._committed.get(tp):
                offsets[tp] = position
        return offsets

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def revoke(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Forget `partitions`; return the positions still worth committing for them."""
        final = {}
        for tp in partitions:
            mark = self._marks.pop(tp, None)
            lease = self._leases.pop(tp, None)
            if lease is not None:
                lease.alive = False
            position = mark.position() if mark is not None else None
            if position is not None and position != self._committed.get(tp):
                final[tp] = position
            self._committed.pop(tp, None)
        return final
