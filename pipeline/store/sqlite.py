# ruff: noqa: S608 — SQL is assembled from constant fragments and placeholders; every value is a bound parameter.
"""The embedded backend: one SQLite file (WAL, FTS5, secure_delete), the default.

    backend = SqliteBackend(".cache/store/store.db")
    await backend.open()

The standard library's sqlite3 on one writer thread and one reader thread: SQLite serialises writers
anyway, and WAL lets the reader answer while a batch is written. Times are epoch milliseconds.
`secure_delete` zeroes deleted content, the FTS index is merged after an erasure and the WAL is
truncated, so an erased text survives neither in free pages nor in the FTS shadow tables.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from pipeline.store.backend import RESPONSE_WINDOW_SECONDS, BackendUnavailable, Cursor, Scope, Search
from pipeline.store.rows import (
    RANK_STATUS,
    AnalyticsFacts,
    Changes,
    ConversationItem,
    Erased,
    MessageView,
    StatusRow,
)

T = TypeVar("T")

SCHEMA_VERSION = 2  # 2: outbound_messages.trace_id
_COMMON_MATCHES = 2000  # more matches than this: walk the time index instead of sorting them
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbound_messages (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    phone_number_id TEXT, wa_id TEXT, message_type TEXT, text TEXT, metadata TEXT,
    accepted_at INTEGER, outcome TEXT, wamid TEXT, attempts INTEGER,
    error_code INTEGER, error_title TEXT, error_class TEXT, error_message TEXT, completed_at INTEGER,
    trace_id TEXT,
    status_rank INTEGER NOT NULL DEFAULT 0,
    sent_at INTEGER, delivered_at INTEGER, read_at INTEGER, played_at INTEGER, failed_at INTEGER
);
CREATE INDEX IF NOT EXISTS outbound_wamid ON outbound_messages (wamid) WHERE wamid IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbound_contact ON outbound_messages (wa_id, created_at, request_id);
CREATE INDEX IF NOT EXISTS outbound_number ON outbound_messages (phone_number_id, created_at, request_id);
CREATE INDEX IF NOT EXISTS outbound_created ON outbound_messages (created_at, request_id);
CREATE TABLE IF NOT EXISTS status_events (
    wamid TEXT NOT NULL, status TEXT NOT NULL, occurred_at INTEGER NOT NULL, rank INTEGER NOT NULL,
    request_id TEXT, phone_number_id TEXT, wa_id TEXT, pricing_category TEXT,
    error_code INTEGER, error_title TEXT, error_class TEXT, error_message TEXT,
    PRIMARY KEY (wamid, status)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS status_occurred ON status_events (occurred_at);
CREATE INDEX IF NOT EXISTS status_contact ON status_events (wa_id) WHERE wa_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS inbound_messages (
    wamid TEXT PRIMARY KEY, wa_id TEXT NOT NULL, phone_number_id TEXT, occurred_at INTEGER NOT NULL,
    message_type TEXT, text TEXT, reply_to TEXT
);
CREATE INDEX IF NOT EXISTS inbound_contact ON inbound_messages (wa_id, occurred_at, wamid);
CREATE INDEX IF NOT EXISTS inbound_number_contact ON inbound_messages (phone_number_id, wa_id, occurred_at);
CREATE INDEX IF NOT EXISTS inbound_occurred ON inbound_messages (occurred_at);
CREATE VIRTUAL TABLE IF NOT EXISTS outbound_search USING fts5(
    text, content='outbound_messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS outbound_search_insert AFTER INSERT ON outbound_messages
WHEN new.text IS NOT NULL BEGIN
    INSERT INTO outbound_search (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS outbound_search_delete AFTER DELETE ON outbound_messages
WHEN old.text IS NOT NULL BEGIN
    INSERT INTO outbound_search (outbound_search, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER IF NOT EXISTS outbound_search_update AFTER UPDATE OF text ON outbound_messages
WHEN old.text IS NOT new.text BEGIN
    INSERT INTO outbound_search (outbound_search, rowid, text)
        SELECT 'delete', old.id, old.text WHERE old.text IS NOT NULL;
    INSERT INTO outbound_search (rowid, text) SELECT new.id, new.text WHERE new.text IS NOT NULL;
END;
"""

_UPSERT_OUTBOUND = """
INSERT INTO outbound_messages (request_id, created_at, phone_number_id, wa_id, message_type, text, metadata,
    accepted_at, outcome, wamid, attempts, error_code, error_title, error_class, error_message, completed_at,
    trace_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (request_id) DO UPDATE SET
""" + ",\n".join(
    f"    {c} = COALESCE(excluded.{c}, {c})"
    for c in (
        "phone_number_id", "wa_id", "message_type", "text", "metadata", "accepted_at", "outcome", "wamid",
        "attempts", "error_code", "error_title", "error_class", "error_message", "completed_at",
        "trace_id",
    )
)

_INSERT_STATUS = """
INSERT INTO status_events (wamid, status, occurred_at, rank, request_id, phone_number_id, wa_id,
    pricing_category, error_code, error_title, error_class, error_message)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (wamid, status) DO NOTHING
"""

_INSERT_INBOUND = """
INSERT INTO inbound_messages (wamid, wa_id, phone_number_id, occurred_at, message_type, text, reply_to)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (wamid) DO NOTHING
"""


def _first(status: str) -> str:
    return f"MIN(CASE WHEN status = '{status}' THEN occurred_at END)"


# The status columns are a function of the timeline (highest rank, first time of each), recomputed for
# the batch's wamids: whatever order the records came in, the row ends the same, and never goes back.
# One grouped pass over the timeline (UPDATE … FROM) rather than a subquery per column and row.
_REFRESH_STATUS = f"""
UPDATE outbound_messages SET status_rank = t.rank, sent_at = t.sent, delivered_at = t.delivered,
    read_at = t.read, played_at = t.played, failed_at = t.failed
FROM (SELECT wamid, MAX(rank) AS rank, {_first("sent")} AS sent, {_first("delivered")} AS delivered,
        {_first("read")} AS read, {_first("played")} AS played, {_first("failed")} AS failed
      FROM status_events WHERE wamid IN (SELECT value FROM json_each(?)) GROUP BY wamid) AS t
WHERE outbound_messages.wamid = t.wamid
"""

_VIEW_COLUMNS = (
    "request_id, created_at, phone_number_id, wa_id, message_type, text, metadata, accepted_at, outcome, wamid,"
    " error_code, error_title, error_class, error_message, status_rank, trace_id"
)


def ms(value: datetime | None) -> int | None:
    return None if value is None else round(value.timestamp() * 1000)


def dt(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)


def _in(column: str, scope: Scope, params: list[Any]) -> str:
    """`AND column IN (…)` for a limited scope, nothing for all numbers."""
    if scope.numbers is None:
        return ""
    numbers = scope.sorted_numbers
    params.extend(numbers)
    # The unary `+` keeps SQLite from walking the (phone_number_id, created_at) index for this term:
    # a deployment has few numbers, so that index matches nearly every row; the contact, search and
    # time indexes are the selective ones (measured: a conversation page 318 ms → about 1 ms).
    return f" AND +{column} IN ({', '.join('?' * len(numbers))})" if numbers else " AND 0"


def fts_query(words: Sequence[str]) -> str:
    """FTS5 syntax for "all these words": each one quoted, so no word is read as an operator."""
    terms = []
    for word in words:
        prefix = word.endswith("*")
        term = word.rstrip("*").replace('"', '""')
        terms.append(f'"{term}"' + ("*" if prefix else ""))
    return " ".join(terms)


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

    # --- plumbing -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process crash
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        # A 64 MiB page cache and memory-mapped reads: the default 2 MiB cache made every random
        # conversation or status lookup in a large file a round of read() calls.
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA mmap_size=268435456")
        return conn

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._wconn is not None, "open() first"
            try:
                return work(self._wconn)
            except sqlite3.Error as exc:
                if self._wconn.in_transaction:
                    self._wconn.execute("ROLLBACK")
                # Locked, disk full, I/O: retry later. Anything else is about the data: the caller's.
                if isinstance(exc, sqlite3.OperationalError):
                    raise BackendUnavailable(f"sqlite: {exc}") from exc
                raise

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._rconn is not None, "open() first"
            try:
                return work(self._rconn)
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"sqlite: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    async def open(self) -> None:
        def setup() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._wconn = self._connect()
            self._upgrade(self._wconn)
            self._wconn.executescript(_SCHEMA)
            self._wconn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._rconn = self._connect()

        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, setup)
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"sqlite: {exc}") from exc

    @staticmethod
    def _upgrade(conn: sqlite3.Connection) -> None:
        """Bring a file written by an older version up to `SCHEMA_VERSION` (a new file has no tables yet)."""
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbound_messages'").fetchone()
        if exists and version < 2:
            conn.execute("ALTER TABLE outbound_messages ADD COLUMN trace_id TEXT")

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection | None) -> None:
            if conn is not None:
                conn.close()

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._reader, shut, self._rconn)
        await loop.run_in_executor(self._writer, shut, self._wconn)
        self._wconn = self._rconn = None

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # --- the projection -------------------------------------------------------------------------

    async def apply(self, changes: Changes) -> dict[str, int]:
        outbound = [
            (r.request_id, ms(r.created_at), r.phone_number_id, r.wa_id, r.message_type, r.text, r.metadata,
             ms(r.accepted_at), r.outcome, r.wamid, r.attempts, r.error_code, r.error_title, r.error_class,
             r.error_message, ms(r.completed_at), r.trace_id)
            for r in changes.outbound.values()
        ]
        statuses = [
            (s.wamid, s.status, ms(s.occurred_at), s.rank, s.request_id, s.phone_number_id, s.wa_id,
             s.pricing_category, s.error_code, s.error_title, s.error_class, s.error_message)
            for s in changes.statuses.values()
        ]
        inbound = [
            (i.wamid, i.wa_id, i.phone_number_id, ms(i.occurred_at), i.message_type, i.text, i.reply_to)
            for i in changes.inbound.values()
        ]
        refresh = orjson.dumps(sorted(changes.refresh_wamids)).decode()

        def write(conn: sqlite3.Connection) -> dict[str, int]:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_UPSERT_OUTBOUND, outbound)
            conn.executemany(_INSERT_STATUS, statuses)
            conn.executemany(_INSERT_INBOUND, inbound)
            if refresh != "[]":
                conn.execute(_REFRESH_STATUS, (refresh,))
            conn.execute("COMMIT")
            return {"outbound_messages": len(outbound), "status_events": len(statuses),
                    "inbound_messages": len(inbound)}

        return await self._write(write)

    # --- reads ----------------------------------------------------------------------------------

    async def message(self, request_id: str, scope: Scope) -> tuple[MessageView, list[StatusRow]] | None:
        def read(conn: sqlite3.Connection) -> tuple[MessageView, list[StatusRow]] | None:
            params: list[Any] = [request_id]
            sql = f"SELECT {_VIEW_COLUMNS} FROM outbound_messages WHERE request_id = ?"
            row = conn.execute(sql + _in("phone_number_id", scope, params), params).fetchone()
            if row is None:
                return None
            view = _view(row)
            timeline = []
            if view.wamid:
                timeline = [
                    StatusRow(wamid=view.wamid, status=r[0], occurred_at=_dt(r[1]), pricing_category=r[2],
                              error_code=r[3], error_title=r[4], error_class=r[5], error_message=r[6])
                    for r in conn.execute(
                        "SELECT status, occurred_at, pricing_category, error_code, error_title, error_class,"
                        " error_message FROM status_events WHERE wamid = ? ORDER BY occurred_at, rank",
                        (view.wamid,),
                    )
                ]
            return view, timeline

        return await self._read(read)

    async def conversation(
        self, wa_id: str, scope: Scope, limit: int, before: Cursor | None
    ) -> list[ConversationItem]:
        def read(conn: sqlite3.Connection) -> list[ConversationItem]:
            params: list[Any] = []
            out_where = "wa_id = ?"
            params.append(wa_id)
            if before is not None:
                out_where += " AND (created_at, request_id) < (?, ?)"
                params.extend([ms(before.at), before.id])
            out_where += _in("phone_number_id", scope, params)
            params.append(limit)
            in_where = "wa_id = ?"
            params.append(wa_id)
            if before is not None:
                in_where += " AND (occurred_at, wamid) < (?, ?)"
                params.extend([ms(before.at), before.id])
            in_where += _in("phone_number_id", scope, params)
            params.extend([limit, limit])
            sql = f"""
            SELECT * FROM (
                SELECT * FROM (SELECT 'outbound', request_id, wamid, phone_number_id, message_type, text,
                        created_at AS at, status_rank, NULL FROM outbound_messages WHERE {out_where}
                    ORDER BY created_at DESC, request_id DESC LIMIT ?)
                UNION ALL
                SELECT * FROM (SELECT 'inbound', wamid, wamid, phone_number_id, message_type, text,
                        occurred_at AS at, NULL, reply_to FROM inbound_messages WHERE {in_where}
                    ORDER BY occurred_at DESC, wamid DESC LIMIT ?)
            ) ORDER BY at DESC, 2 DESC LIMIT ?"""
            return [
                ConversationItem(
                    direction=r[0], id=r[1], wamid=r[2], phone_number_id=r[3], message_type=r[4], text=r[5],
                    at=_dt(r[6]), status=None if r[7] is None else RANK_STATUS[r[7]], reply_to=r[8],
                )
                for r in conn.execute(sql, params)
            ]

        return await self._read(read)

    async def search(self, search: Search, scope: Scope) -> list[MessageView]:
        def read(conn: sqlite3.Connection) -> list[MessageView]:
            params: list[Any] = []
            columns = ", ".join(f"o.{c.strip()}" for c in _VIEW_COLUMNS.split(","))
            if search.words:
                query = fts_query(search.words)
                # SQLite's planner cannot see how many rows a MATCH returns, so look: a rare term is read
                # through the FTS index and sorted; a common one by walking the time index newest first
                # against the set of matches, which stops at the page's end instead of sorting them all.
                common = conn.execute(
                    "SELECT count(*) FROM (SELECT rowid FROM outbound_search WHERE outbound_search MATCH ?"
                    f" LIMIT {_COMMON_MATCHES})", (query,)).fetchone()[0] >= _COMMON_MATCHES
                # (A correlated `MATCH ... AND rowid = o.id` per row walked measured 30x slower than the set.)
                index = "INDEXED BY outbound_created" if common else ""
                sql = (f"SELECT {columns} FROM outbound_messages o {index} WHERE o.id IN"
                       " (SELECT rowid FROM outbound_search WHERE outbound_search MATCH ?)")
                params.append(query)
            else:
                sql = f"SELECT {columns} FROM outbound_messages o WHERE 1"
            sql += _filters(search, params) + _in("o.phone_number_id", scope, params)
            sql += " ORDER BY o.created_at DESC, o.request_id DESC LIMIT ?"
            params.append(search.limit)
            return [_view(r) for r in conn.execute(sql, params)]

        return await self._read(read)

    async def has_contact(self, wa_id: str, scope: Scope) -> bool:
        def read(conn: sqlite3.Connection) -> bool:
            p1: list[Any] = [wa_id]
            p2: list[Any] = [wa_id]
            q1 = "SELECT 1 FROM outbound_messages WHERE wa_id = ?" + _in("phone_number_id", scope, p1)
            q2 = "SELECT 1 FROM inbound_messages WHERE wa_id = ?" + _in("phone_number_id", scope, p2)
            return bool(conn.execute(f"SELECT EXISTS({q1}) OR EXISTS({q2})", p1 + p2).fetchone()[0])

        return await self._read(read)

    async def analytics_facts(
        self, scope: Scope, since: datetime, until: datetime, wa_id: str | None
    ) -> list[AnalyticsFacts]:
        def read(conn: sqlite3.Connection) -> list[AnalyticsFacts]:
            params: list[Any] = [RESPONSE_WINDOW_SECONDS * 1000, ms(since), ms(until)]
            where = "o.created_at >= ? AND o.created_at < ?"
            if wa_id is not None:
                where += " AND o.wa_id = ?"
                params.append(wa_id)
            where += _in("o.phone_number_id", scope, params)
            sql = f"""
            SELECT COALESCE(o.accepted_at, o.created_at),
                o.status_rank >= 1 OR o.outcome = 'sent',
                COALESCE(o.delivered_at, o.read_at, o.played_at), COALESCE(o.read_at, o.played_at),
                o.failed_at IS NOT NULL OR o.outcome IN ('failed', 'dead_lettered', 'expired'),
                COALESCE(o.error_code, f.error_code), COALESCE(o.error_title, f.error_title),
                (SELECT MIN(i.occurred_at) FROM inbound_messages i
                  WHERE i.phone_number_id = o.phone_number_id AND i.wa_id = o.wa_id
                    AND i.occurred_at >= COALESCE(o.accepted_at, o.created_at) / 1000 * 1000
                    AND i.occurred_at <= COALESCE(o.accepted_at, o.created_at) + ?)
            FROM outbound_messages o
            LEFT JOIN status_events f ON f.wamid = o.wamid AND f.status = 'failed'
            WHERE {where}"""
            # `params` follows the text: the window (in the SELECT list) first, then the WHERE clause.
            return [
                AnalyticsFacts(accepted_at=_dt(r[0]), sent=bool(r[1]), delivered_at=dt(r[2]), read_at=dt(r[3]),
                               failed=bool(r[4]), error_code=r[5], error_title=r[6], replied_at=dt(r[7]))
                for r in conn.execute(sql, params)
            ]

        return await self._read(read)

    # --- erasure and retention ------------------------------------------------------------------

    async def erase(self, wa_id: str, scope: Scope) -> Erased:
        def write(conn: sqlite3.Connection) -> Erased:
            conn.execute("BEGIN IMMEDIATE")
            p: list[Any] = [wa_id]
            scoped = _in("phone_number_id", scope, p)
            statuses = conn.execute(
                "DELETE FROM status_events WHERE wamid IN"
                f" (SELECT wamid FROM outbound_messages WHERE wa_id = ? AND wamid IS NOT NULL{scoped})",
                p,
            ).rowcount
            statuses += conn.execute(f"DELETE FROM status_events WHERE wa_id = ?{scoped}", p).rowcount
            outbound = conn.execute(f"DELETE FROM outbound_messages WHERE wa_id = ?{scoped}", p).rowcount
            inbound = conn.execute(f"DELETE FROM inbound_messages WHERE wa_id = ?{scoped}", p).rowcount
            # Merge the FTS segments: a deleted row's terms otherwise stay in the index until a merge.
            conn.execute("INSERT INTO outbound_search (outbound_search) VALUES ('optimize')")
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old pages leave the WAL too
            return Erased(outbound=outbound, inbound=inbound, statuses=statuses)

        return await self._write(write)

    async def expire(self, cutoff: datetime) -> dict[str, int]:
        limit = ms(cutoff)

        def write(conn: sqlite3.Connection) -> dict[str, int]:
            removed = {}
            for table, column, key in (
                ("outbound_messages", "created_at", "id"),
                ("status_events", "occurred_at", "wamid, status"),
                ("inbound_messages", "occurred_at", "wamid"),
            ):
                total = 0
                while True:  # in slices, so the reader and the projection are never held for long
                    conn.execute("BEGIN IMMEDIATE")
                    count = conn.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN"
                        f" (SELECT {key} FROM {table} WHERE {column} < ? LIMIT 5000)",
                        (limit,),
                    ).rowcount
                    conn.execute("COMMIT")
                    total += count
                    if count < 5000:
                        break
                removed[table] = total
            conn.execute("PRAGMA optimize")  # keeps the planner's statistics current, cheaply
            return removed

        return await self._write(write)


def _filters(search: Search, params: list[Any]) -> str:
    sql = ""
    if search.wa_id is not None:
        sql += " AND o.wa_id = ?"
        params.append(search.wa_id)
    if search.status_rank is not None:
        sql += " AND o.status_rank = ?"
        params.append(search.status_rank)
    if search.since is not None:
        sql += " AND o.created_at >= ?"
        params.append(ms(search.since))
    if search.until is not None:
        sql += " AND o.created_at < ?"
        params.append(ms(search.until))
    if search.cursor is not None:
        sql += " AND (o.created_at, o.request_id) < (?, ?)"
        params.extend([ms(search.cursor.at), search.cursor.id])
    return sql


def _dt(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _view(r: Sequence[Any]) -> MessageView:
    return MessageView(
        request_id=r[0], created_at=_dt(r[1]), phone_number_id=r[2], wa_id=r[3], message_type=r[4], text=r[5],
        metadata=r[6], accepted_at=dt(r[7]), outcome=r[8], wamid=r[9], error_code=r[10], error_title=r[11],
        error_class=r[12], error_message=r[13], status=RANK_STATUS[r[14]], trace_id=r[15],
    )
