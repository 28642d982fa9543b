"""The per-partition dedupe state file: what it answers, its checkpoint, and what survives a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.ingest.store import StateStore


def test_values_and_checkpoint_are_written_together_and_survive_a_reopen(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path, partition=3, cache_bytes=1 << 20)
    assert store.checkpoint() is None
    store.write([("wamid.a", b"A1", 10, 0), ("wamid.b", b"B1", 20, 1)], checkpoint=2)
    assert (store.get("wamid.a"), store.get("wamid.b"), store.get("wamid.c")) == (b"A1", b"B1", None)
    store.close()
    again = StateStore.open(tmp_path, partition=3, cache_bytes=1 << 20)
    try:
        assert (again.get("wamid.a"), again.checkpoint(), len(again)) == (b"A1", 2, 2)
        assert (tmp_path / "status.state-3.sqlite").exists()
    finally:
        again.close()


def test_a_batch_applies_in_order_even_across_forget_and_write(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite", cache_bytes=1 << 20)
    try:
        store.write([("wamid.a", b"A1", 10, 0)], checkpoint=1)
        store.write([("wamid.a", None, 0, 0), ("wamid.a", b"A2", 11, 1), ("wamid.b", b"B1", 12, 2),
                     ("wamid.b", None, 0, 0)], checkpoint=3)
        assert (store.get("wamid.a"), store.get("wamid.b")) == (b"A2", None)
        store.close()
        store = StateStore(tmp_path / "s.sqlite", cache_bytes=1 << 20)  # the file, not the cache, says so
        assert (store.get("wamid.a"), store.get("wamid.b"), store.checkpoint()) == (b"A2", None, 3)
    finally:
        store.close()


def test_a_failed_write_leaves_neither_file_nor_cache_changed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite", cache_bytes=1 << 20)
    try:
        store.write([("wamid.a", b"A1", 10, 0)], checkpoint=1)
        with pytest.raises(sqlite3.IntegrityError):  # a wamid of NULL breaks the primary key mid-batch
            store.write([("wamid.a", b"A2", 11, 1), (None, b"X", 12, 2)], checkpoint=3)  # type: ignore[list-item]
        assert (store.get("wamid.a"), store.checkpoint()) == (b"A1", 1)  # the cache did not run ahead
    finally:
        store.close()


def test_retention_and_uncommitted_offsets_are_found_through_the_journal(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite", cache_bytes=1 << 20)
    try:
        store.write([("wamid.old", b"O", 100, 5), ("wamid.new", b"N", 900, 40), ("wamid.mid", b"M", 500, 20)],
                    checkpoint=41)
        assert sorted(store.expired(cutoff_ms=600)) == ["wamid.mid", "wamid.old"]
        assert sorted(store.holding_from(20)) == [("wamid.mid", b"M"), ("wamid.new", b"N")]
        store.clear()
        assert (len(store), store.checkpoint(), store.get("wamid.new")) == (0, None, None)
    finally:
        store.close()


def test_a_value_written_again_or_forgotten_is_judged_by_its_last_write(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite", cache_bytes=1 << 20)
    try:
        store.write([("wamid.a", b"A1", 100, 5), ("wamid.b", b"B1", 110, 6), ("wamid.c", b"C1", 120, 30)],
                    checkpoint=31)
        # a is written again after the cutoff, b is forgotten, c is rolled back below offset 20.
        store.write([("wamid.a", b"A2", 700, 7), ("wamid.b", None, 0, 0), ("wamid.c", b"C0", 130, 9)],
                    checkpoint=32)
        assert store.expired(cutoff_ms=600) == ["wamid.c"]
        assert store.holding_from(20) == []
        journal = sqlite3.connect(store.path).execute("SELECT wamid, updated_ms FROM writes ORDER BY rowid")
        # the passed entries that no longer describe a value are gone; c's stays until c is forgotten
        assert journal.fetchall() == [("wamid.c", 120), ("wamid.a", 700), ("wamid.c", 130)]
        store.write([("wamid.c", None, 0, 0)], checkpoint=33)
        assert (store.expired(cutoff_ms=600), len(store)) == ([], 1)
    finally:
        store.close()


def test_a_file_of_another_layout_is_cleared_for_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE state (wamid TEXT PRIMARY KEY, value BLOB, updated_ms INT, top_offset INT);"
                      "CREATE TABLE checkpoint (one INTEGER PRIMARY KEY, next_offset INTEGER);"
                      "INSERT INTO state VALUES ('wamid.a', x'41', 1, 0); INSERT INTO checkpoint VALUES (0, 9);")
    old.commit()
    old.close()
    store = StateStore(path, cache_bytes=1 << 20)
    try:  # no checkpoint: the restore reads the whole changelog
        assert (store.checkpoint(), store.get("wamid.a"), len(store)) == (None, None, 0)
    finally:
        store.close()


def test_a_temporary_store_leaves_nothing_behind() -> None:
    store = StateStore(None, cache_bytes=1 << 20)
    path = store.path
    store.write([("wamid.a", b"A", 1, 0)], checkpoint=1)
    assert path.exists()
    store.close()
    assert not path.exists()
