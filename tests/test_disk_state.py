"""The shared cache and transaction of the on-disk state stores (pipeline/disk_state.py)."""

from __future__ import annotations

import sqlite3

import pytest

from pipeline.disk_state import RecentCache, transaction


def _cache(limit: int) -> RecentCache[bytes]:
    return RecentCache[bytes](limit, lambda key, value: len(key) + len(value))


def test_the_oldest_entries_go_first_once_the_byte_limit_is_passed() -> None:
    cache = _cache(10)
    cache.put("a", b"1234")  # 5
    cache.put("b", b"1234")  # 10
    cache.put("c", b"1")     # 12 > 10: "a" goes
    assert cache.get("a") is None
    assert (cache.get("b"), cache.get("c")) == (b"1234", b"1")
    assert cache.bytes == 7


def test_touch_keeps_a_used_entry_and_put_replaces_without_double_counting() -> None:
    cache = _cache(10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    cache.touch("a")
    cache.put("c", b"1")
    assert cache.get("b") is None
    assert cache.get("a") == b"1234"
    cache.put("a", b"12")
    assert cache.bytes == 3 + 2


def test_a_value_larger_than_the_limit_is_not_cached_and_discards_free_their_bytes() -> None:
    cache = _cache(4)
    cache.put("big", b"12345")
    assert cache.get("big") is None
    assert cache.bytes == 0
    cache.put("a", b"1")
    cache.put("b", b"22")
    cache.discard_where(lambda value: len(value) == 2)
    cache.discard("a")
    assert cache.bytes == 0
    assert cache.get("a") is None


def test_a_failed_transaction_leaves_nothing_behind() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (x INTEGER)")

    def failing_batch() -> None:
        with transaction(db):
            db.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("mid-batch")

    with pytest.raises(RuntimeError):
        failing_batch()
    with transaction(db):
        db.execute("INSERT INTO t VALUES (2)")
    assert db.execute("SELECT x FROM t").fetchall() == [(2,)]
