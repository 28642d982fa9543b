"""Which offset of a partition may be committed, when records finish out of order.

    mark = Watermark()
    mark.track(10); mark.track(11); mark.track(12)
    mark.finish(11)
    mark.position()         # 10: 10 is still open, so committing past it would lose it on a crash
    mark.finish(10)
    mark.position()         # 12: the next offset to read; 10 and 11 are done, 12 is not

A record is finished when every callback it produced was delivered or dead-lettered (or it produced
none). Records of one partition are tracked in offset order (Kafka hands them out that way), so the
open ones form a queue whose head bounds the commit: the committed offset is always one past a
contiguous run of finished records, and never moves backwards. Offsets may have gaps (transaction
markers, compaction): only tracked offsets matter.
"""

from __future__ import annotations

from collections import deque


class Watermark:
    __slots__ = ("_done", "_last", "_open")

    def __init__(self) -> None:
        self._open: deque[int] = deque()  # tracked, in order; finished ones are dropped from the left
        self._done: set[int] = set()  # finished but not yet at the head
        self._last: int | None = None  # the highest offset tracked

    def track(self, offset: int) -> None:
        if self._last is not None and offset <= self._last:
            raise ValueError(f"offset {offset} tracked after {self._last}: offsets must increase")
        self._open.append(offset)
        self._last = offset

    def finish(self, offset: int) -> None:
        if self._open and self._open[0] == offset:
            self._open.popleft()
            while self._open and self._open[0] in self._done:
                self._done.discard(self._open.popleft())
        else:
            self._done.add(offset)

    def position(self) -> int | None:
        """The offset to commit: the oldest open record's, or one past the last tracked when none is open."""
        if self._open:
            return self._open[0]
        return None if self._last is None else self._last + 1

    @property
    def open_count(self) -> int:
        return len(self._open)
