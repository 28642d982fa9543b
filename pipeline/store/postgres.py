# ruff: noqa: S608 — SQL is assembled from constant fragments and placeholders; every value is a bound parameter.
"""The production backend: PostgreSQL through asyncpg, tables partitioned by day.

    backend = PostgresBackend("postgresql://store:…@db:5432/store", pool_size=4)
    await backend.open()          # connects, migrates (advisory-locked), enables row-level security

- Messages, statuses and inbound messages are range-partitioned by day, so retention drops whole
  partitions (and trims the one the cut-off falls into).
- Text search: a `tsvector` per message (the `simple` configuration: no stemming, any language) in
  `outbound_search`, kept by a trigger and GIN-indexed; `word:*` is a prefix. A table of its own,
  without row-level security, because a policy keeps `@@` (not leakproof) out of any index scan: the
  search would read every row. The matched ids are read scoped to the caller's numbers, and the rows
  themselves still come through the policy of `outbound_messages`.
- Row-level security by business number behind the API's own checks: every read runs with
  `store.numbers` set to the caller's numbers in its transaction; the projection's connections set `*`.
- Migrations: numbered SQL steps in `MIGRATIONS`, applied once each under an advisory lock (a short
  hand-written runner: Alembic would bring SQLAlchemy for what is a list of statements here).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

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

_POLICY = (
    "current_setting('store.numbers', true) = '*' OR phone_number_id = ANY"
    " (string_to_array(current_setting('store.numbers', true), ','))"
)

MIGRATIONS: tuple[str, ...] = (
    # 1: the three tables, partitioned by day, with their indexes.
    """
    CREATE TABLE outbound_messages (
        request_id text NOT NULL, created_at timestamptz NOT NULL,
        phone_number_id text, wa_id text, message_type text, text text, metadata text,
        accepted_at timestamptz, outcome text, wamid text, attempts integer,
        error_code integer, error_title text, error_class text, error_message text, completed_at timestamptz,
        status_rank smallint NOT NULL DEFAULT 0,
        sent_at timestamptz, delivered_at timestamptz, read_at timestamptz, played_at timestamptz,
        failed_at timestamptz,
        search tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(text, ''))) STORED,
        PRIMARY KEY (request_id, created_at)
    ) PARTITION BY RANGE (created_at);
    CREATE INDEX outbound_wamid ON outbound_messages (wamid);
    CREATE INDEX outbound_contact ON outbound_messages (wa_id, created_at, request_id);
    CREATE INDEX outbound_number ON outbound_messages (phone_number_id, created_at, request_id);
    CREATE INDEX outbound_created ON outbound_messages (created_at, request_id);
    CREATE INDEX outbound_search ON outbound_messages USING gin (search);
    CREATE TABLE status_events (
        wamid text NOT NULL, status text NOT NULL, occurred_at timestamptz NOT NULL, rank smallint NOT NULL,
        request_id text, phone_number_id text, wa_id text, pricing_category text,
        error_code integer, error_title text, error_class text, error_message text,
        PRIMARY KEY (wamid, status, occurred_at)
    ) PARTITION BY RANGE (occurred_at);
    CREATE INDEX status_contact ON status_events (wa_id);
    CREATE TABLE inbound_messages (
        wamid text NOT NULL, wa_id text NOT NULL, phone_number_id text, occurred_at timestamptz NOT NULL,
        message_type text, text text, reply_to text,
        PRIMARY KEY (wamid, occurred_at)
    ) PARTITION BY RANGE (occurred_at);
    CREATE INDEX inbound_contact ON inbound_messages (wa_id, occurred_at, wamid);
    CREATE INDEX inbound_number_contact ON inbound_messages (phone_number_id, wa_id, occurred_at);
    """,
    # 2: row-level security by business number (FORCE: the owning role is held to it too).
    "\n".join(
        f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; ALTER TABLE {t} FORCE ROW LEVEL SECURITY;"
        f" CREATE POLICY by_number ON {t} USING ({_POLICY}) WITH CHECK ({_POLICY});"
        for t in ("outbound_messages", "status_events", "inbound_messages")
    ),
    # 3: the send's trace id, for the console's trace link.
    "ALTER TABLE outbound_messages ADD COLUMN trace_id text;",
    # 4: the text index moves out of row-level security's reach (see the module docstring), partitioned
    # like its messages so retention drops it with them; existing partitions and vectors are carried over.
    # GIN's pending list (new entries, scanned by every search until vacuum merges them) is kept to
    # 512 kB instead of 4 MB: a search then reads at most that much unsorted.
    """
    DROP INDEX outbound_search;
    CREATE TABLE outbound_search (
        request_id text NOT NULL, created_at timestamptz NOT NULL, phone_number_id text,
        search tsvector NOT NULL, PRIMARY KEY (request_id, created_at)
    ) PARTITION BY RANGE (created_at);
    CREATE INDEX outbound_search_words ON outbound_search USING gin (search) WITH (gin_pending_list_limit = 512);
    CREATE INDEX outbound_search_number ON outbound_search (phone_number_id, created_at, request_id);
    DO $$
    DECLARE p record;
    BEGIN
        FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class t ON t.oid = i.inhparent
                 WHERE t.relname = 'outbound_messages' LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF outbound_search %s',
                           replace(p.relname, 'outbound_messages', 'outbound_search'), p.bound);
        END LOOP;
    END $$;
    INSERT INTO outbound_search SELECT request_id, created_at, phone_number_id, search
        FROM outbound_messages WHERE text IS NOT NULL;
    ALTER TABLE outbound_messages DROP COLUMN search;
    CREATE FUNCTION outbound_search_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            DELETE FROM outbound_search WHERE request_id = OLD.request_id AND created_at = OLD.created_at;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.text IS NOT NULL THEN
            INSERT INTO outbound_search VALUES
                (NEW.request_id, NEW.created_at, NEW.phone_number_id, to_tsvector('simple', NEW.text));
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER outbound_search_written AFTER INSERT OR DELETE ON outbound_messages
        FOR EACH ROW EXECUTE FUNCTION outbound_search_sync();
    CREATE TRIGGER outbound_search_changed AFTER UPDATE OF text, phone_number_id ON outbound_messages
        FOR EACH ROW WHEN (OLD.text IS DISTINCT FROM NEW.text OR OLD.phone_number_id IS DISTINCT FROM
        NEW.phone_number_id) EXECUTE FUNCTION outbound_search_sync();
    """,
)

PARTITIONED = {"outbound_messages": "created_at", "outbound_search": "created_at", "status_events": "occurred_at",
               "inbound_messages": "occurred_at"}
_PARTITION = re.compile(r"^(outbound_messages|outbound_search|status_events|inbound_messages)_p(\d{8})$")

_OUTBOUND_COLUMNS = (
    "request_id", "created_at", "phone_number_id", "wa_id", "message_type", "text", "metadata", "accepted_at",
    "outcome", "wamid", "attempts", "error_code", "error_title", "error_class", "error_message", "completed_at",
    "trace_id",
)
_UPSERT_OUTBOUND = (
    f"INSERT INTO outbound_messages ({', '.join(_OUTBOUND_COLUMNS)})"
    f" SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],"
    f" $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::int[], $12::int[], $13::text[], $14::text[],"
    f" $15::text[], $16::timestamptz[], $17::text[])"
    f" ON CONFLICT (request_id, created_at) DO UPDATE SET "
    + ", ".join(f"{c} = COALESCE(excluded.{c}, outbound_messages.{c})" for c in _OUTBOUND_COLUMNS[2:])
)
_INSERT_STATUS = (
    "INSERT INTO status_events (wamid, status, occurred_at, rank, request_id, phone_number_id, wa_id,"
    " pricing_category, error_code, error_title, error_class, error_message)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::smallint[], $5::text[], $6::text[],"
    " $7::text[], $8::text[], $9::int[], $10::text[], $11::text[], $12::text[])"
    " ON CONFLICT DO NOTHING"
)
_INSERT_INBOUND = (
    "INSERT INTO inbound_messages (wamid, wa_id, phone_number_id, occurred_at, message_type, text, reply_to)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],"
    " $7::text[]) ON CONFLICT DO NOTHING"
)


def _first(status: str) -> str:
    return f"MIN(occurred_at) FILTER (WHERE status = '{status}')"


# As on SQLite: the status columns are recomputed from the timeline of the batch's wamids.
_REFRESH_STATUS = f"""
UPDATE outbound_messages o SET status_rank = t.rank, sent_at = t.sent, delivered_at = t.delivered,
    read_at = t.read, played_at = t.played, failed_at = t.failed
FROM (SELECT wamid, MAX(rank) AS rank, {_first("sent")} AS sent, {_first("delivered")} AS delivered,
        {_first("read")} AS read, {_first("played")} AS played, {_first("failed")} AS failed
      FROM status_events WHERE wamid = ANY($1::text[]) GROUP BY wamid) t
WHERE o.wamid = t.wamid
"""

_VIEW_COLUMNS = (
    "request_id, created_at, phone_number_id, wa_id, message_type, text, metadata, accepted_at, outcome, wamid,"
    " error_code, error_title, error_class, error_message, status_rank, trace_id"
)
_SEARCH_COLUMNS = ", ".join(
    c if c in ("request_id", "created_at") else f"m.{c}" for c in _VIEW_COLUMNS.replace(",", " ").split()
)
# A server away, starting, shutting down or full: retry later. Other errors are about the data.
_TRANSIENT = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.OperatorInterventionError,
              asyncpg.TooManyConnectionsError, TimeoutError)


def ts_query(words: Sequence[str]) -> str:
    """`to_tsquery` text for "all these words" (the API admits only word characters and a final `*`)."""
    return " & ".join(
        f"'{w.rstrip('*')}':*" if w.endswith("*") else f"'{w}'" for w in (w.replace("'", "") for w in words)
    )


def _scope_setting(scope: Scope) -> str:
    return "*" if scope.numbers is None else ",".join(scope.sorted_numbers)


COMMON_MATCHES = 2_000
"""Above this many matches a term is common: its newest page is found by walking time, not the index."""


class _Query:
    """SQL text with numbered placeholders, built clause by clause."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


def _bounds(q: _Query, t: str, search: Search, scope: Scope) -> list[str]:
    """What both tables can check: time, cursor, the caller's numbers."""
    where = []
    if search.since is not None:
        where.append(f"{t}.created_at >= {q.arg(search.since)}")
    if search.until is not None:
        where.append(f"{t}.created_at < {q.arg(search.until)}")
    if search.cursor is not None:
        where.append(f"({t}.created_at, {t}.request_id) < ({q.arg(search.cursor.at)}, {q.arg(search.cursor.id)})")
    if scope.numbers is not None and len(scope.numbers) == 1:
        # `=`, not `= ANY`: an index on (number, time) can then be walked newest first and stopped at
        # the limit (`= ANY` yields no order), which is how a common word's newest page is found.
        where.append(f"{t}.phone_number_id = {q.arg(scope.sorted_numbers[0])}")
    elif scope.numbers is not None:
        where.append(f"{t}.phone_number_id = ANY({q.arg(scope.sorted_numbers)}::text[])")
    return where


def _words(q: _Query, search: Search, scope: Scope) -> str:
    return " AND ".join([f"s.search @@ to_tsquery('simple', {q.arg(ts_query(search.words))})",
                         *_bounds(q, "s", search, scope)])


def match_count_sql(search: Search, scope: Scope) -> tuple[str, list[Any]]:
    """How many messages match the words, counted up to `COMMON_MATCHES + 1`: cheap either way (a rare
    term through the GIN index, a common one stops early)."""
    q = _Query()
    sql = (f"SELECT count(*) FROM (SELECT 1 FROM outbound_search s WHERE {_words(q, search, scope)}"
           f" LIMIT {COMMON_MATCHES + 1}) c")
    return sql, q.args


def search_sql(search: Search, scope: Scope, *, common: bool = False) -> tuple[str, list[Any]]:
    """The search's SQL and its arguments: newest first, `search.limit` rows after `search.cursor`.

    Words are matched in `outbound_search` (no row-level security there, so its GIN index is usable),
    scoped to the caller's numbers; the rows are read from `outbound_messages`, under its policy. A
    rare term (`common=False`) reads its matches through the index first, then sorts them; a common
    one walks time and tests each message's words, stopping at the limit.
    """
    q = _Query()
    order = "ORDER BY created_at DESC, request_id DESC"
    source = "outbound_messages m"
    if search.words:
        hits = f"SELECT s.request_id, s.created_at FROM outbound_search s WHERE {_words(q, search, scope)}"
        if common and search.wa_id is None and search.status_rank is None:
            # The newest matches are the answer: walk (number, time) newest first, testing each
            # message's words, and stop at the limit (a common word matches within a few rows).
            hits += f" ORDER BY s.created_at DESC, s.request_id DESC LIMIT {q.arg(search.limit)}"
        else:
            # Every match through the GIN index, then sorted. MATERIALIZED: the planner would otherwise
            # drive the search from a time index (1.4-1.6 s for an order number in 200,000 messages).
            # A common word with a recipient or status filter reads all its matches too.
            hits = f"WITH hits AS MATERIALIZED ({hits}) SELECT * FROM hits"
        source = f"({hits}) hits JOIN outbound_messages m USING (request_id, created_at)"
    where = _bounds(q, "m", search, scope)
    if search.wa_id is not None:
        where.append(f"m.wa_id = {q.arg(search.wa_id)}")
    if search.status_rank is not None:
        where.append(f"m.status_rank = {q.arg(search.status_rank)}")
    conditions = " AND ".join(where) or "TRUE"
    return f"SELECT {_SEARCH_COLUMNS} FROM {source} WHERE {conditions} {order} LIMIT {q.arg(search.limit)}", q.args


class PostgresBackend:
    name = "postgresql"

    def __init__(self, dsn: str, pool_size: int = 4) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._writer: asyncpg.Pool | None = None
        self._reader: asyncpg.Pool | None = None
        self._partitions: set[str] = set()

    # --- plumbing -------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._writer = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=2, server_settings={"store.numbers": "*"}, timeout=10
            )
            self._reader = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size, server_settings={"store.numbers": ""}, timeout=10
            )
            async with self._writer.acquire() as conn:
                await _migrate(conn)
                rows = await conn.fetch("SELECT relname FROM pg_class WHERE relname ~ '_p[0-9]{8}$'")
                self._partitions = {r["relname"] for r in rows}
        except _TRANSIENT as exc:
            await self.close()
            raise BackendUnavailable(f"postgresql: {type(exc).__name__}") from exc

    async def close(self) -> None:
        for pool in (self._reader, self._writer):
            if pool is not None:
                pool.terminate()
        self._reader = self._writer = None

    async def _write(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._writer is None:
            raise BackendUnavailable("postgresql: not connected")
        try:
            async with self._writer.acquire(timeout=10) as conn:
                return await work(conn)
        except _TRANSIENT as exc:
            # The exception's text may quote the DSN's host; its type is enough to act on.
            raise BackendUnavailable(f"postgresql: {type(exc).__name__}") from exc

    async def _read(self, scope: Scope, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._reader is None:
            raise BackendUnavailable("postgresql: not connected")
        try:
            async with self._reader.acquire(timeout=10) as conn, conn.transaction(readonly=True):
                await conn.execute("SELECT set_config('store.numbers', $1, true)", _scope_setting(scope))
                return await work(conn)
        except _TRANSIENT as exc:
            raise BackendUnavailable(f"postgresql: {type(exc).__name__}") from exc

    async def ping(self) -> None:
        await self._read(Scope(frozenset()), lambda c: c.fetchval("SELECT 1"))

    async def _ensure_partitions(self, conn: asyncpg.Connection, table: str, times: Sequence[datetime]) -> None:
        for day in sorted({t.astimezone(UTC).date() for t in times}):
            name = f"{table}_p{day:%Y%m%d}"
            if name in self._partitions:
                continue
            # Another replica may create it between the check and the create: that is success too.
            with contextlib.suppress(asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table}"
                    f" FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
                )
            self._partitions.add(name)

    # --- the projection -------------------------------------------------------------------------

    async def apply(self, changes: Changes) -> dict[str, int]:
        outbound = list(changes.outbound.values())
        statuses = list(changes.statuses.values())
        inbound = list(changes.inbound.values())
        refresh = sorted(changes.refresh_wamids)

        async def write(conn: asyncpg.Connection) -> dict[str, int]:
            await self._ensure_partitions(conn, "outbound_messages", [r.created_at for r in outbound])
            await self._ensure_partitions(conn, "outbound_search", [r.created_at for r in outbound])
            await self._ensure_partitions(conn, "status_events", [s.occurred_at for s in statuses])
            await self._ensure_partitions(conn, "inbound_messages", [i.occurred_at for i in inbound])
            async with conn.transaction():
                if outbound:
                    await conn.execute(_UPSERT_OUTBOUND, *_columns(outbound, _OUTBOUND_COLUMNS))
                if statuses:
                    await conn.execute(_INSERT_STATUS, *(
                        [getattr(s, c) for s in statuses] if c != "rank" else [s.rank for s in statuses]
                        for c in ("wamid", "status", "occurred_at", "rank", "request_id", "phone_number_id",
                                  "wa_id", "pricing_category", "error_code", "error_title", "error_class",
                                  "error_message")
                    ))
                if inbound:
                    await conn.execute(_INSERT_INBOUND, *_columns(
                        inbound, ("wamid", "wa_id", "phone_number_id", "occurred_at", "message_type", "text",
                                  "reply_to")))
                if refresh:
                    await conn.execute(_REFRESH_STATUS, refresh)
            return {"outbound_messages": len(outbound), "status_events": len(statuses),
                    "inbound_messages": len(inbound)}

        return await self._write(write)

    # --- reads ----------------------------------------------------------------------------------

    async def message(self, request_id: str, scope: Scope) -> tuple[MessageView, list[StatusRow]] | None:
        async def read(conn: asyncpg.Connection) -> tuple[MessageView, list[StatusRow]] | None:
            row = await conn.fetchrow(
                f"SELECT {_VIEW_COLUMNS} FROM outbound_messages WHERE request_id = $1 LIMIT 1", request_id)
            if row is None:
                return None
            view = _view(row)
            timeline = []
            if view.wamid:
                rows = await conn.fetch(
                    "SELECT * FROM (SELECT DISTINCT ON (status) status, occurred_at, rank, pricing_category,"
                    " error_code, error_title, error_class, error_message FROM status_events WHERE wamid = $1"
                    " ORDER BY status, occurred_at) t ORDER BY occurred_at, rank", view.wamid)
                timeline = [
                    StatusRow(wamid=view.wamid, status=r["status"], occurred_at=r["occurred_at"],
                              pricing_category=r["pricing_category"], error_code=r["error_code"],
                              error_title=r["error_title"], error_class=r["error_class"],
                              error_message=r["error_message"])
                    for r in rows
                ]
            return view, timeline

        # Row-level security already hides other numbers; the explicit check keeps one behaviour with SQLite.
        found = await self._read(scope, read)
        return found if found is not None and scope.allows(found[0].phone_number_id) else None

    async def conversation(
        self, wa_id: str, scope: Scope, limit: int, before: Cursor | None
    ) -> list[ConversationItem]:
        async def read(conn: asyncpg.Connection) -> list[ConversationItem]:
            out_cut = in_cut = ""
            args: list[Any] = [wa_id, limit]
            if before is not None:
                args.extend([before.at, before.id])
                out_cut = " AND (created_at, request_id) < ($3, $4)"
                in_cut = " AND (occurred_at, wamid) < ($3, $4)"
            rows = await conn.fetch(
                f"""SELECT * FROM (
                    (SELECT 'outbound' AS direction, request_id AS id, wamid, phone_number_id, message_type, text,
                        created_at AS at, status_rank, NULL AS reply_to FROM outbound_messages
                     WHERE wa_id = $1{out_cut} ORDER BY created_at DESC, request_id DESC LIMIT $2)
                    UNION ALL
                    (SELECT 'inbound', wamid, wamid, phone_number_id, message_type, text, occurred_at, NULL,
                        reply_to FROM inbound_messages
                     WHERE wa_id = $1{in_cut} ORDER BY occurred_at DESC, wamid DESC LIMIT $2)
                ) t ORDER BY at DESC, id DESC LIMIT $2""",
                *args,
            )
            return [
                ConversationItem(
                    direction=r["direction"], id=r["id"], wamid=r["wamid"], phone_number_id=r["phone_number_id"],
                    message_type=r["message_type"], text=r["text"], at=r["at"],
                    status=None if r["status_rank"] is None else RANK_STATUS[r["status_rank"]],
                    reply_to=r["reply_to"],
                )
                for r in rows
            ]

        return await self._read(scope, read)

    async def search(self, search: Search, scope: Scope) -> list[MessageView]:
        async def read(conn: asyncpg.Connection) -> list[MessageView]:
            common = False
            if search.words:
                count_sql, count_args = match_count_sql(search, scope)
                common = await conn.fetchval(count_sql, *count_args) > COMMON_MATCHES
            sql, args = search_sql(search, scope, common=common)
            return [_view(r) for r in await conn.fetch(sql, *args)]

        return await self._read(scope, read)

    async def has_contact(self, wa_id: str, scope: Scope) -> bool:
        async def read(conn: asyncpg.Connection) -> bool:
            found: bool = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM outbound_messages WHERE wa_id = $1)"
                " OR EXISTS (SELECT 1 FROM inbound_messages WHERE wa_id = $1)", wa_id)
            return found

        return await self._read(scope, read)

    async def analytics_facts(
        self, scope: Scope, since: datetime, until: datetime, wa_id: str | None
    ) -> list[AnalyticsFacts]:
        async def read(conn: asyncpg.Connection) -> list[AnalyticsFacts]:
            contact = " AND o.wa_id = $4" if wa_id is not None else ""
            args: list[Any] = [since, until, timedelta(seconds=RESPONSE_WINDOW_SECONDS)]
            if wa_id is not None:
                args.append(wa_id)
            rows = await conn.fetch(
                f"""SELECT COALESCE(o.accepted_at, o.created_at) AS accepted_at,
                    COALESCE(o.status_rank >= 1 OR o.outcome = 'sent', FALSE) AS sent,
                    COALESCE(o.delivered_at, o.read_at, o.played_at) AS delivered_at,
                    COALESCE(o.read_at, o.played_at) AS read_at,
                    COALESCE(o.failed_at IS NOT NULL OR o.outcome IN ('failed', 'dead_lettered', 'expired'), FALSE)
                        AS failed,
                    COALESCE(o.error_code, f.error_code) AS error_code,
                    COALESCE(o.error_title, f.error_title) AS error_title,
                    (SELECT MIN(i.occurred_at) FROM inbound_messages i
                      WHERE i.phone_number_id = o.phone_number_id AND i.wa_id = o.wa_id
                        AND i.occurred_at >= date_trunc('second', COALESCE(o.accepted_at, o.created_at))
                        AND i.occurred_at <= COALESCE(o.accepted_at, o.created_at) + $3) AS replied_at
                FROM outbound_messages o
                LEFT JOIN LATERAL (SELECT error_code, error_title FROM status_events s
                    WHERE s.wamid = o.wamid AND s.status = 'failed' LIMIT 1) f ON TRUE
                WHERE o.created_at >= $1 AND o.created_at < $2{contact}""",
                *args,
            )
            return [AnalyticsFacts(**dict(r)) for r in rows]

        return await self._read(scope, read)

    # --- erasure and retention ------------------------------------------------------------------

    async def erase(self, wa_id: str, scope: Scope) -> Erased:
        async def write(conn: asyncpg.Connection) -> Erased:
            async with conn.transaction():
                await conn.execute("SELECT set_config('store.numbers', $1, true)", _scope_setting(scope))
                statuses = _count(await conn.execute(
                    "DELETE FROM status_events WHERE wamid IN"
                    " (SELECT wamid FROM outbound_messages WHERE wa_id = $1 AND wamid IS NOT NULL)", wa_id))
                statuses += _count(await conn.execute("DELETE FROM status_events WHERE wa_id = $1", wa_id))
                outbound = _count(await conn.execute("DELETE FROM outbound_messages WHERE wa_id = $1", wa_id))
                inbound = _count(await conn.execute("DELETE FROM inbound_messages WHERE wa_id = $1", wa_id))
            return Erased(outbound=outbound, inbound=inbound, statuses=statuses)

        return await self._write(write)

    async def expire(self, cutoff: datetime) -> dict[str, int]:
        cutoff_day = cutoff.astimezone(UTC).date()

        async def write(conn: asyncpg.Connection) -> dict[str, int]:
            removed = dict.fromkeys(PARTITIONED, 0)
            rows = await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY($1::text[])", list(PARTITIONED))
            for name in sorted(r["relname"] for r in rows):
                match = _PARTITION.match(name)
                if match is None:
                    continue
                table, day = match[1], datetime.strptime(match[2], "%Y%m%d").date()
                if day + timedelta(days=1) <= cutoff_day:  # wholly older: drop it
                    async with conn.transaction():
                        removed[table] += await conn.fetchval(f"SELECT count(*) FROM {name}")
                        await conn.execute(f"DROP TABLE {name}")
                    self._partitions.discard(name)
            for table, column in PARTITIONED.items():  # the partition the cut-off falls into
                removed[table] += _count(await conn.execute(f"DELETE FROM {table} WHERE {column} < $1", cutoff))
            del removed["outbound_search"]  # the text index of outbound_messages, not messages of its own
            return removed

        return await self._write(write)


async def _migrate(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7411930)")  # one replica migrates at a time
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS store_migrations (version integer PRIMARY KEY, applied_at timestamptz"
            " NOT NULL DEFAULT now())")
        done = {r["version"] for r in await conn.fetch("SELECT version FROM store_migrations")}
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version not in done:
                await conn.execute(sql)
                await conn.execute("INSERT INTO store_migrations (version) VALUES ($1)", version)


def _columns(rows: Sequence[Any], names: Sequence[str]) -> list[list[Any]]:
    return [[getattr(r, n) for r in rows] for n in names]


def _count(status: str) -> int:
    """Rows affected, from asyncpg's command tag (`DELETE 3`)."""
    return int(status.rsplit(" ", 1)[-1])


def _view(r: asyncpg.Record) -> MessageView:
    return MessageView(
        request_id=r["request_id"], created_at=r["created_at"], phone_number_id=r["phone_number_id"],
        wa_id=r["wa_id"], message_type=r["message_type"], text=r["text"], metadata=r["metadata"],
        accepted_at=r["accepted_at"], outcome=r["outcome"], wamid=r["wamid"], error_code=r["error_code"],
        error_title=r["error_title"], error_class=r["error_class"], error_message=r["error_message"],
        status=RANK_STATUS[r["status_rank"]], trace_id=r["trace_id"],
    )


__all__ = ["MIGRATIONS", "PostgresBackend"]
