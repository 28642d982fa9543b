"""Which offsets of one partition are done, and what may be committed.

    tracker = OffsetTracker.restore(committed=120, metadata="o1:120:eJz...")   # after assignment
    tracker.already_done(120)            # False: a new record to process
    tracker.already_done(123)            # True: done before the last restart (in the metadata), skip it
    tracker.done(120)
    tracker.position                # 121: commit this; every offset below it is done
    tracker.metadata()              # offsets done above it, for the commit's metadata string

Messages finish out of order (per-recipient queues, retries), so the committed offset is the
lowest offset not yet done: the highest *contiguous* completed position, as in Confluent's
Parallel Consumer. The offsets already done above it travel in the commit's metadata, so that a
restart skips them instead of sending them twice. The encoding is a bitmap of the offsets from
`position` on, zlib-compressed and base64-encoded (runs of done offsets compress to almost
nothing). Kafka caps metadata (`offset.metadata.max.bytes`, 4096 by default): when the map does
not fit, its tail is cut (those offsets would be redone after a crash) and `overflowing` tells
the consumer to stop fetching this partition until the gap closes.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections import deque

_PREFIX = "o1"
DEFAULT_METADATA_LIMIT = 4000


class OffsetTracker:
    __slots__ = ("_done_above", "_limit", "_pending", "_skip", "next_fetch", "overflowing")

    def __init__(self, position: int, skip: frozenset[int] = frozenset(), *, limit: int = DEFAULT_METADATA_LIMIT):
        self._pending: deque[int] = deque()  # fetched, in offset order; done ones leave from the left
        self._done_above: set[int] = set()  # done, but some lower offset is not
        self._skip = set(skip)
        self._limit = limit
        self.next_fetch = position  # one past the highest offset seen
        self.overflowing = False

    @classmethod
    def restore(cls, committed: int, metadata: str | None, *, limit: int = DEFAULT_METADATA_LIMIT) -> OffsetTracker:
        return cls(committed, decode_done(committed, metadata), limit=limit)

    def already_done(self, offset: int) -> bool:
        """Record a fetched offset; True when it is already done (before a restart, or fetched twice): skip it."""
        if offset < self.next_fetch and offset not in self._skip:
            # Seen already (a fetch repeated after a seek): treat as done, never process twice here.
            return True
        self.next_fetch = offset + 1
        if offset in self._skip:
            self._skip.discard(offset)
            if not self._pending:
                return True
            self._pending.append(offset)
            self._done_above.add(offset)
            return True
        self._pending.append(offset)
        return False

    def done(self, offset: int) -> None:
        pending = self._pending
        if pending and pending[0] == offset:
            pending.popleft()
            done = self._done_above
            while pending and pending[0] in done:
                done.discard(pending.popleft())
        else:
            self._done_above.add(offset)

    @property
    def position(self) -> int:
        """The offset to commit: every offset below it is done."""
        return self._pending[0] if self._pending else self.next_fetch

    @property
    def outstanding(self) -> int:
        """Fetched offsets not done yet (what this partition holds in memory)."""
        return len(self._pending) - len(self._done_above)

    def metadata(self) -> str:
        """The done offsets above `position`, encoded to fit Kafka's metadata limit."""
        if not self._done_above:
            self.overflowing = False
            return ""
        base = self.position
        done = sorted(self._done_above)
        encoded = encode_done(base, done)
        self.overflowing = len(encoded) > self._limit
        while len(encoded) > self._limit and done:
            done = done[: len(done) // 2]  # keep the lowest: the offsets closest to being committed
            encoded = encode_done(base, done) if done else ""
        return encoded


def encode_done(base: int, done: list[int]) -> str:
    if not done:
        return ""
    bits = bytearray((done[-1] - base) // 8 + 1)
    for offset in done:
        delta = offset - base
        bits[delta >> 3] |= 1 << (delta & 7)
    packed = base64.b64encode(zlib.compress(bytes(bits), 9)).decode("ascii")
    return f"{_PREFIX}:{base}:{packed}"


def decode_done(committed: int, metadata: str | None) -> frozenset[int]:
    """Offsets marked done in `metadata`; empty when it is absent, foreign or for another position."""
    if not metadata or not metadata.startswith(f"{_PREFIX}:"):
        return frozenset()
    try:
        _, base_text, packed = metadata.split(":", 2)
        base = int(base_text)
        bits = zlib.decompress(base64.b64decode(packed, validate=True))
    except (ValueError, binascii.Error, zlib.error):
        return frozenset()
    if base != committed:
        # Someone committed a plain offset since (a tool, a reset): the map describes another start.
        return frozenset()
    return frozenset(
        base + index * 8 + bit for index, byte in enumerate(bits) if byte for bit in range(8) if byte >> bit & 1
    )
