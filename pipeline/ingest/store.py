"""One partition's dedupe state on disk: SQLite, with a byte-bounded cache of recent values in front.

    store = StateStore.open(state_dir, partition=2, cache_bytes=64 * 1024 * 1024)
    store.get("wamid…")                    # the status.state value (bytes) or None
    store.write([("wamid…", value, updated_ms, top_offset), ("gone…", None, 0, 0)], checkpoint=1042)
    store.checkpoint()                     # next status.state offset the store reflects (None: empty/new)
    store.expired(cutoff_ms)               # wamids silent since before cutoff_ms (retention)
    store.holding_from(committed)          # (wamid, value) made from status.updates offsets ≥ committed

Contract (docs/ingest.md, "Where the dedupe state lives"):
- `status.state` is the changelog; this file is a local copy of it up to `checkpoint()`. The deduper
  writes here only after the batch's changelog records were acknowledged, and the checkpoint goes in
  the same transaction as the values, so the checkpoint never runs ahead of what the file holds and
  the file never holds a value whose changelog record was not written. A crash loses at most the
  last transactions (WAL, synchronous=NORMAL): the checkpoint goes back with them, and the tail
  after it is read again.
- Memory is SQLite's page cache (`cache_bytes`) plus the cache of recent values (`cache_bytes` as
  well, counted as the values' and keys' sizes plus a fixed overhead per entry), whatever the traffic.
- `path=None` keeps the file in a temporary directory removed on `close` (tests, and a replica
  without a volume: every assignment then rebuilds from the changelog).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pipeline.disk_state import RecentCache, transaction

# `writes` is a journal of every value written, in order: retention and the restore's rollback find
# rows through its indexes. An update then changes the state row in place and appends at the right
# edge of the journal and its indexes, instead of moving two scattered entries of indexes on `state`
# itself (bench/state.py: warm decisions 0.45x -> 0.59x of a dict at 1 M). Entries that no longer
# describe a value (written again, or forgotten) are dropped once retention passes them.
# Bumped when the layout changes: a file of another version is cleared and rebuilt from the changelog.
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    wamid TEXT PRIMARY KEY, value BLOB NOT NULL, updated_ms INTEGER NOT NULL, top_offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS writes (wamid TEXT NOT NULL, updated_ms INTEGER NOT NULL, top_offset INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS writes_by_age ON writes (updated_ms);
CREATE INDEX IF NOT EXISTS writes_by_offset ON writes (top_offset);
CREATE TABLE IF NOT EXISTS checkpoint (one INTEGER PRIMARY KEY CHECK (one = 0), next_offset INTEGER NOT NULL);
"""
# Besides the key's and value's own sizes: the OrderedDict entry, its link and table share (≈ 100 to
# 150 bytes; unlike the API's answer cache, no test checks this bound yet).
ENTRY_OVERHEAD_BYTES = 160

Change = tuple[str, bytes | None, int, int]  # wamid, value (None: forget), updated_ms, top source offset


class StateStore:
    def __init__(self, path: Path | None, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ingest-state-")
            path = Path(self._tmp.name) / "state.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # A checkpoint (the one write that syncs, with synchronous=NORMAL) every 64 MB of WAL rather than
        # SQLite's 4 MB: a batch of status updates dirties ~1,000 scattered pages, so the default made
        # nearly every commit a checkpoint (bench/state.py: warm decisions 0.38x -> 0.46x of a dict).
        self._db.executescript(f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=16384; "
                               f"PRAGMA cache_size=-{max(1, cache_bytes // 1024)};")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self._db.executescript("DROP TABLE IF EXISTS state; DROP TABLE IF EXISTS writes; "
                                   f"DROP TABLE IF EXISTS checkpoint; PRAGMA user_version={SCHEMA_VERSION};")
        self._db.executescript(_SCHEMA)
        self._recent = RecentCache[bytes](cache_bytes, _cost)

    @classmethod
    def open(cls, state_dir: Path | None, partition: int, cache_bytes: int) -> StateStore:
        """The store of `partition` in `state_dir` (one file per partition), or a temporary one."""
        return cls(None if state_dir is None else state_dir / f"status.state-{partition}.sqlite", cache_bytes)

    def get(self, wamid: str) -> bytes | None:
        value = self._recent.get(wamid)
        if value is not None:
            self._recent.touch(wamid)
            return value
        row = self._db.execute("SELECT value FROM state WHERE wamid = ?", (wamid,)).fetchone()
        if row is None:
            return None
        value = bytes(row[0])
        self._recent.put(wamid, value)
        return value

    def write(self, changes: Iterable[Change], checkpoint: int | None) -> None:
        """One transaction: the values (None deletes) and, if given, the new checkpoint."""
        done: list[tuple[str, bytes | None]] = []
        with transaction(self._db):
            # In runs of one kind, in order (a wamid may be forgotten and written again in one batch):
            # one `executemany` per run costs a fraction of a call per row.
            run: list[Change] = []
            for change in changes:
                if run and (run[-1][1] is None) != (change[1] is None):
                    self._write_run(run)
                    run = []
                run.append(change)
                done.append((change[0], change[1]))
            if run:
                self._write_run(run)
            if checkpoint is not None:
                self._db.execute("INSERT OR REPLACE INTO checkpoint VALUES (0, ?)", (checkpoint,))
        # Only after the commit: the cache never answers what the file does not hold.
        for wamid, value in done:
            if value is None:
                self._recent.discard(wamid)
            else:
                self._recent.put(wamid, value)

    def _write_run(self, run: list[Change]) -> None:
        if run[0][1] is None:
            self._db.executemany("DELETE FROM state WHERE wamid = ?", [(c[0],) for c in run])
        else:
            self._db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?)", run)
            self._db.executemany("INSERT INTO writes VALUES (?, ?, ?)", [(c[0], c[2], c[3]) for c in run])

    def checkpoint(self) -> int | None:
        row = self._db.execute("SELECT next_offset FROM checkpoint").fetchone()
        return int(row[0]) if row else None

    def clear(self) -> None:
        """Forget everything (a rebuild from the changelog's beginning follows)."""
        with transaction(self._db):
            self._db.execute("DELETE FROM state")
            self._db.execute("DELETE FROM writes")
            self._db.execute("DELETE FROM checkpoint")
        self._recent.clear()

    def expired(self, cutoff_ms: int) -> list[str]:
        """Wamids whose value was last written before `cutoff_ms`. Drops the journal entries it passes
        that no longer describe a value (written again since, or forgotten)."""
        rows = self._db.execute(
            "SELECT w.rowid, w.wamid, s.updated_ms FROM writes w LEFT JOIN state s USING (wamid)"
            " WHERE w.updated_ms < ?", (cutoff_ms,)).fetchall()
        stale = [(rowid,) for rowid, _, current in rows if current is None or current >= cutoff_ms]
        if stale:
            with transaction(self._db):
                self._db.executemany("DELETE FROM writes WHERE rowid = ?", stale)
        return list(dict.fromkeys(wamid for _, wamid, current in rows if current is not None and current < cutoff_ms))

    def holding_from(self, offset: int) -> list[tuple[str, bytes]]:
        rows = self._db.execute(
            "SELECT wamid, value FROM state WHERE top_offset >= ? AND wamid IN"
            " (SELECT wamid FROM writes WHERE top_offset >= ?)", (offset, offset))
        return [(wamid, bytes(value)) for wamid, value in rows.fetchall()]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM state").fetchone()[0])

    def close(self) -> None:
        self._db.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _cost(wamid: str, value: bytes) -> int:
    return ENTRY_OVERHEAD_BYTES + sys.getsizeof(wamid) + sys.getsizeof(value)
