"""The parts every on-disk state store shares (API answers, ingest dedupe state): a cache of recent
values bounded in bytes, and one SQLite transaction.

    cache = RecentCache[bytes](limit_bytes=1024, cost=lambda key, value: len(key) + len(value))
    cache.put("a", b"xyz")
    cache.get("a")                     # b'xyz'
    cache.bytes                        # 4
    with transaction(db):              # BEGIN … COMMIT, ROLLBACK on any exception
        ...

Hand-written over cachetools: an OrderedDict's C `get` keeps a hit near a dict's speed, and the bound
is in bytes, charged by the caller's `cost` (keys and values are caller-chosen, of any length).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class RecentCache(Generic[V]):
    """Values by key, oldest evicted first once their `cost` passes `limit_bytes`.

    `get` does not reorder (a hit stays a C call); a caller that wants least-recently-used eviction
    calls `touch` on a hit. A value costing more than the whole limit is not cached at all.
    """

    def __init__(self, limit_bytes: int, cost: Callable[[str, V], int]) -> None:
        self.limit_bytes = limit_bytes
        self._cost = cost
        self._values: OrderedDict[str, V] = OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """Memory charged to the cached values (at most `limit_bytes`)."""
        return self._bytes

    def get(self, key: str) -> V | None:
        return self._values.get(key)

    def touch(self, key: str) -> None:
        """Mark `key` (cached) as the most recently used."""
        self._values.move_to_end(key)

    def put(self, key: str, value: V) -> None:
        self.discard(key)
        cost = self._cost(key, value)
        if cost > self.limit_bytes:
            return
        self._values[key] = value
        self._bytes += cost
        while self._bytes > self.limit_bytes:
            oldest, evicted = self._values.popitem(last=False)
            self._bytes -= self._cost(oldest, evicted)

    def discard(self, key: str) -> None:
        value = self._values.pop(key, None)
        if value is not None:
            self._bytes -= self._cost(key, value)

    def discard_where(self, stale: Callable[[V], bool]) -> None:
        for key in [k for k, value in self._values.items() if stale(value)]:
            self.discard(key)

    def clear(self) -> None:
        self._values.clear()
        self._bytes = 0


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One explicit transaction on a connection opened with `isolation_level=None`."""
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
