"""The settled answers of idempotency keys and request ids, on disk: SQLite, one file per replica,
with a Bloom filter and a bounded cache of recent answers in front.

    answers = AnswerIndex(path, topic, cache_mb=64, expected_keys=10_000_000, recent_mb=32)
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
a primary key, writes come in one transaction per fetched batch, and the calls are short enough to
make on the event loop thread.

Why the two layers in front (`bench/idempotency_state.py` measures them against a dict):
- most claims are of new keys, so a lookup is usually a miss: a Bloom filter (`rbloom`, sized for
  `expected_keys` per window at `FALSE_POSITIVE_RATE`, ≈ 1.8 bytes a key) answers "never stored"
  without touching SQLite. A positive (a real key, or 0.1 % of new ones) falls through to SQLite, so
  answers stay exact. Bloom filters cannot delete, so there are two generations: new keys go into
  the current one, and `prune` drops the previous one once every answer it holds has been pruned
  from SQLite (its newest `at_ms` is older than the window), then starts a new one. Memory: at
  most two filters, whatever the traffic; more keys than `expected_keys` raise the false-positive
  rate (more SQLite reads), never the memory or a wrong answer. On open, the keys already on disk
  are added by a background thread reading one scan of the (covering) age index; until it is done
  every lookup reads SQLite, exact but slower (rbloom's fast hash is Python's own, salted per
  process, so a filter saved by one process cannot be loaded by the next).
- retries come soon after the first request: the answers settled or read most recently are kept in
  memory, bounded by `recent_mb` (the strings' sizes plus a fixed overhead per entry; the oldest
  leave first).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rbloom import Bloom

from pipeline.disk_state import RecentCache, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    scope TEXT PRIMARY KEY, request_id TEXT NOT NULL, accepted_at TEXT NOT NULL,
    fingerprint TEXT NOT NULL, at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_by_age ON answers (at_ms);
CREATE TABLE IF NOT EXISTS positions (topic TEXT, partition INTEGER, next_offset INTEGER NOT NULL,
                                      PRIMARY KEY (topic, partition));
"""

# One new key in a thousand pays a SQLite read (≈ 200 µs against ≈ 1 µs for the filter, so 1 % would
# already cost a miss three times its filter check, measured); 14.4 bits a key.
FALSE_POSITIVE_RATE = 0.001
# Memory of one cached answer besides its four strings (`sys.getsizeof`, exact whatever the script):
# the Answer object, its int and the OrderedDict's entry, link and table share (≈ 115 bytes, more after
# the table grows; measured with tracemalloc in tests/api/test_answers.py, which checks the bound).
ENTRY_OVERHEAD_BYTES = 200


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: str
    accepted_at: str
    fingerprint: str
    at_ms: int  # the `accepted` record's timestamp: the window counts from it


class _Generation:
    """Keys stored while this filter was the current one, and the newest `at_ms` among them."""

    def __init__(self, expected_keys: int) -> None:
        self.keys = Bloom(expected_keys, FALSE_POSITIVE_RATE)
        self.newest_ms: int | None = None
        self._lock = threading.Lock()  # the loader thread and the event loop both raise `newest_ms`

    def add(self, scope: str, at_ms: int) -> None:
        self.keys.add(scope)
        self.saw(at_ms)

    def saw(self, at_ms: int) -> None:
        with self._lock:
            if self.newest_ms is None or at_ms > self.newest_ms:
                self.newest_ms = at_ms


class AnswerIndex:
    def __init__(self, path: Path | None, topic: str, cache_mb: int = 64, expected_keys: int = 10_000_000,
                 recent_mb: int = 32) -> None:
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
        self._expected_keys = expected_keys
        self._current = _Generation(expected_keys)
        self._previous: _Generation | None = None
        self._recent = RecentCache[Answer](recent_mb * 1024 * 1024, _cost)
        self._closing = False
        self.filter_ready = threading.Event()
        self._loader: threading.Thread | None = None
        if self._db.execute("SELECT 1 FROM answers LIMIT 1").fetchone() is None:
            self.filter_ready.set()
        else:
            self._loader = threading.Thread(target=self._load_filter, name="answers-filter", daemon=True)
            self._loader.start()

    def get(self, scope: str) -> Answer | None:
        answer = self._recent.get(scope)
        if answer is not None:
            return answer
        if (scope not in self._current.keys and (self._previous is None or scope not in self._previous.keys)
                and self.filter_ready.is_set()):
            return None  # never stored (exact: every stored key is in a live generation)
        row = self._db.execute("SELECT request_id, accepted_at, fingerprint, at_ms FROM answers WHERE scope = ?",
                               (scope,)).fetchone()
        if row is None:
            return None  # a false positive, or an answer deleted since
        answer = Answer(*row)
        self._recent.put(scope, answer)
        return answer

    def apply(self, settled: Iterable[tuple[str, Answer | None]], positions: dict[int, int]) -> None:
        """Store answers (None deletes one: its window is over) and the partitions' next offsets."""
        stored: list[tuple[str, Answer | None]] = []
        with transaction(self._db):
            for scope, answer in settled:
                if answer is None:
                    self._db.execute("DELETE FROM answers WHERE scope = ?", (scope,))
                else:
                    self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                                     (scope, answer.request_id, answer.accepted_at, answer.fingerprint, answer.at_ms))
                stored.append((scope, answer))
            self._db.executemany("INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
                                 [(self.topic, p, o) for p, o in positions.items()])
        # Only after the commit: memory never answers what the disk does not hold.
        for scope, answer in stored:
            if answer is None:
                self._recent.discard(scope)
            else:
                self._current.add(scope, answer.at_ms)
                self._recent.put(scope, answer)

    def positions(self) -> dict[int, int]:
        rows = self._db.execute("SELECT partition, next_offset FROM positions WHERE topic = ?", (self.topic,))
        return dict(rows.fetchall())

    def prune(self, older_than_ms: int) -> int:
        with transaction(self._db):
            deleted: int = self._db.execute("DELETE FROM answers WHERE at_ms < ?", (older_than_ms,)).rowcount
        self._recent.discard_where(lambda answer: answer.at_ms < older_than_ms)
        if not self.filter_ready.is_set():
            return deleted  # the loader is still filling the current generation: keep it
        previous = self._previous
        if previous is not None and (previous.newest_ms is None or previous.newest_ms < older_than_ms):
            self._previous = previous = None  # everything it held is gone from SQLite
        if previous is None:
            self._previous, self._current = self._current, _Generation(self._expected_keys)
        return deleted

    @property
    def recent_bytes(self) -> int:
        """Memory charged to the cache of recent answers (at most `recent_limit_bytes`)."""
        return self._recent.bytes

    @property
    def recent_limit_bytes(self) -> int:
        return self._recent.limit_bytes

    @recent_limit_bytes.setter
    def recent_limit_bytes(self, limit: int) -> None:
        self._recent.limit_bytes = limit

    @property
    def filter_bytes(self) -> int:
        """Memory of the live Bloom filters."""
        live = [self._current] if self._previous is None else [self._current, self._previous]
        return sum(g.keys.size_in_bits // 8 for g in live)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._closing = True
        if self._loader is not None:
            self._loader.join()
        self._db.close()
        if hasattr(self, "_tmp"):
            self._tmp.cleanup()

    def _load_filter(self) -> None:
        """Add the keys on disk at open to the current generation (its own connection, one snapshot)."""
        generation = self._current
        reader = sqlite3.connect(self.path, isolation_level=None)
        try:
            reader.execute("BEGIN")  # one snapshot; keys written after it reach the filter through `apply`
            generation.saw(reader.execute("SELECT max(at_ms) FROM answers").fetchone()[0])
            rows = reader.execute("SELECT scope FROM answers")  # the covering age index: the keys only
            while not self._closing and (batch := rows.fetchmany(10_000)):
                # A list, not a generator: no Python code runs (so no other thread) inside `update`.
                generation.keys.update([scope for (scope,) in batch])
            if not self._closing:
                self.filter_ready.set()
        finally:
            reader.close()


def _cost(scope: str, answer: Answer) -> int:
    return (ENTRY_OVERHEAD_BYTES + sys.getsizeof(scope) + sys.getsizeof(answer.request_id)
            + sys.getsizeof(answer.accepted_at) + sys.getsizeof(answer.fingerprint))
