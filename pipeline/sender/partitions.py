"""The partitions this process owns: an offset tracker each, what was last committed, which are going.

    owned = Partitions()
    owned.assign(0, committed=1200, metadata="o1:1200:…")   # a tracker restored from the commit
    owned.tracker(0)                       # its OffsetTracker, or None when the partition is not ours
    owned.owns(work)                       # may work taken in for this partition still be sent and requeued?
    owned.holds(0, tracker)                # is `tracker` still the partition's (may its outcomes be published)?
    owned.offsets_to_commit()              # {partition: (offset, metadata)} changed since `committed(...)`
    owned.start_revoking({0})              # `owns` turns false for their work at once
    final = owned.release({0})             # no longer ours: final (offset, metadata) of each
    owned.final_offsets({0})               # the same, as of now (asked once, by the last commit)

Contract: a partition is owned from `assign` to `release`; work carries the tracker of the
partition at intake, and is the partition's only while that very tracker is (a partition revoked and
assigned again gets a new tracker, so work from before cannot mark its offsets). `owns` is false as
soon as a revocation starts, `holds` until the partition is released: an outcome already being
published during the grace still lands, and its offset is counted by `final_offsets`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from pipeline.sender.offsets import OffsetTracker
from pipeline.sender.work import Work

Offsets = dict[int, tuple[int, str]]  # partition -> (offset, metadata) to commit


class Partitions:
    def __init__(self) -> None:
        self._trackers: dict[int, OffsetTracker] = {}
        self._last_commit: Offsets = {}
        self._revoking: set[int] = set()
        self._handed_over: dict[int, OffsetTracker] = {}  # released, final offsets not yet taken

    def __iter__(self) -> Iterator[int]:
        return iter(self._trackers)

    def __contains__(self, partition: object) -> bool:
        return partition in self._trackers

    def assign(self, partition: int, committed: int | None, metadata: str | None) -> None:
        """Take `partition` from `committed` on; offsets done above it (in `metadata`) are skipped."""
        self._trackers[partition] = OffsetTracker.restore(committed or 0, metadata)
        self._last_commit[partition] = (committed or 0, metadata or "")
        self._revoking.discard(partition)
        self._handed_over.pop(partition, None)

    def tracker(self, partition: int) -> OffsetTracker | None:
        return self._trackers.get(partition)

    def owns(self, work: Work) -> bool:
        partition = work.origin.partition
        return partition not in self._revoking and self._trackers.get(partition) is work.tracker

    def holds(self, partition: int, tracker: OffsetTracker) -> bool:
        return self._trackers.get(partition) is tracker

    def start_revoking(self, partitions: Collection[int]) -> set[int]:
        """Mark the owned ones of `partitions` as going; returns them."""
        lost = set(partitions) & self._trackers.keys()
        self._revoking |= lost
        return lost

    def release(self, partitions: Collection[int]) -> Offsets:
        """They are no longer ours: their final (offset, metadata), also kept for `final_offsets`."""
        final: Offsets = {}
        for partition in partitions:
            tracker = self._trackers.pop(partition)
            self._handed_over[partition] = tracker
            final[partition] = (tracker.position, tracker.metadata())
            self._last_commit.pop(partition, None)
        self._revoking -= set(partitions)
        return final

    def final_offsets(self, partitions: Collection[int]) -> Offsets:
        """Released `partitions`' final (offset, metadata) as of now (asked once, by their last commit).

        Later than `release`'s answer by the commit's drain: a publish still awaiting its acknowledgement
        when the grace ran out lands in the transaction being committed, and marks its offset done once
        acknowledged, so the offsets committed with it must include it.
        """
        final: Offsets = {}
        for partition in partitions:
            tracker = self._handed_over.pop(partition, None)
            if tracker is not None:
                final[partition] = (tracker.position, tracker.metadata())
        return final

    def offsets_to_commit(self) -> Offsets:
        """Positions (and done-above metadata) that changed since the last `committed`."""
        changed: Offsets = {}
        for partition, tracker in self._trackers.items():
            if partition in self._revoking:
                continue
            entry = (tracker.position, tracker.metadata())
            if entry != self._last_commit.get(partition):
                changed[partition] = entry
        return changed

    def committed(self, offsets: Offsets) -> None:
        self._last_commit.update(offsets)

    def outstanding(self, partition: int) -> int:
        tracker = self._trackers.get(partition)
        return tracker.outstanding if tracker is not None else 0

    def overflowing(self, partition: int) -> bool:
        tracker = self._trackers.get(partition)
        return tracker is not None and tracker.overflowing
