"""The settled answers of idempotency keys and request ids, on disk: SQLite, one file per replica.

    answers = AnswerIndex(path, topic, cache_mb=64)   # path None: a temporary file
    answers.get(scope)                  # Answer(request_id, accepted_at, fingerprint, at_ms) or None
    answers.apply(settled, positions)   # one transaction: new answers and the partitions' next offsets
    answers.positions()                 # {partition: next offset} read back at start-up
    answers.prune(older_than_ms)        # forget answers settled before the window

Why a file: a settled answer must be kept for the whole `API_IDEMPOTENCY_WINDOW_SECONDS` (a day by
default), so held in memory it grows with traffic times window in every replica (86 million entries
at 1,000 keyed requests/s). On disk, memory is SQLite's page cache (`cache_mb`), and a replica that
restarts on the same disk reads back only the topic's tail after `positions()`. In-flight claims,
which live for seconds, stay in memory (`pipeline.api.idempotency`).

SQLite (stdlib, no server, no new dependency) rather than LMDB or RocksDB: lookups are point reads of
a primary key (a few µs from the cache, measured in `bench/idempotency_state.py`), writes come in one
transaction per fetched batch, and the calls are short enough to make on the event loop thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    scope TEXT PRIMARY KEY, request_id TEXT NOT NULL, accepted_at TEXT NOT NULL,
    fingerprint TEXT NOT NULL, at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_by_age ON answers (at_ms);
CREATE TABLE IF NOT EXISTS positions (topic TEXT, partition INTEGER, next_offset INTEGER NOT NULL,
                                      PRIMARY KEY (topic, partition));
"""


@dataclass(frozen=True)
class Answer:
    request_id: str
    accepted_at: str
    fingerprint: str
    at_ms: int  # the `accepted` record's timestamp: the window counts from it


class AnswerIndex:
    def __init__(self, path: Path | None, topic: str, cache_mb: int = 64) -> None:
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="api-answers-")
            path = Path(self._tmp.name) / "answers.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.topic = topic
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL + NORMAL: a crash may lose the last transactions, never corrupt; the offsets are
        # written in the same transaction as the answers, so what is lost is simply read again.
        self._db.executescript(f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                               f"PRAGMA cache_size=-{cache_mb * 1024}; {_SCHEMA}")

    def get(self, scope: str) -> Answer | None:
        row = self._db.execute("SELECT request_id, accepted_at, fingerprint, at_ms FROM answers WHERE scope = ?",
                               (scope,)).fetchone()
        return None if row is None else Answer(*row)

    def apply(self, settled: Iterable[tuple[str, Answer | None]], positions: dict[int, int]) -> None:
        """Store answers (None deletes one: its window is over) and the partitions' next offsets."""
        with self._transaction():
            for scope, answer in settled:
                if answer is None:
                    self._db.execute("DELETE FROM answers WHERE scope = ?", (scope,))
                else:
                    self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                                     (scope, answer.request_id, answer.accepted_at, answer.fingerprint, answer.at_ms))
            self._db.executemany("INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
                                 [(self.topic, p, o) for p, o in positions.items()])

    def positions(self) -> dict[int, int]:
        rows = self._db.execute("SELECT partition, next_offset FROM positions WHERE topic = ?", (self.topic,))
        return dict(rows.fetchall())

    def prune(self, older_than_ms: int) -> int:
        with self._transaction():
            deleted: int = self._db.execute("DELETE FROM answers WHERE at_ms < ?", (older_than_ms,)).rowcount
        return deleted

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()
        if hasattr(self, "_tmp"):
            self._tmp.cleanup()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
