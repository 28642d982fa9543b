"""What only PostgreSQL does: daily partitions that retention drops whole, row-level security, migrations."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

import tests.store.test_backends as shared
from pipeline.store import postgres
from pipeline.store.backend import Scope, Search
from pipeline.store.postgres import MIGRATIONS, PostgresBackend, search_sql
from pipeline.store.projection import project
from tests.store.conftest import PostgresServer
from tests.store.records import CONTACT, NUMBER_A, NUMBER_B, T0, delivered_chain


async def _partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid")
    return {r["relname"] for r in rows}


async def test_retention_drops_whole_partitions(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.dsn(postgres_server.new_database())
    backend = PostgresBackend(dsn)
    await backend.open()
    old = T0 - timedelta(days=120)
    try:
        await backend.apply(project([*delivered_chain("req_old", "wamid.old", accepted=old),
                                     *delivered_chain("req_new", "wamid.new")])[0])
        conn = await asyncpg.connect(dsn)
        try:
            assert f"outbound_messages_p{old:%Y%m%d}" in await _partitions(conn)
            removed = await backend.expire(T0 - timedelta(days=90))
            assert removed["outbound_messages"] == 1
            left = await _partitions(conn)
            assert f"outbound_messages_p{old:%Y%m%d}" not in left
            assert f"status_events_p{old:%Y%m%d}" not in left
            assert f"outbound_messages_p{T0:%Y%m%d}" in left
        finally:
            await conn.close()
    finally:
        await backend.close()


async def test_row_level_security_hides_other_numbers_even_from_direct_sql(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.dsn(postgres_server.new_database())
    backend = PostgresBackend(dsn)
    await backend.open()
    try:
        await backend.apply(project([*delivered_chain("req_a", "wamid.a", number=NUMBER_A),
                                     *delivered_chain("req_b", "wamid.b", number=NUMBER_B)])[0])
    finally:
        await backend.close()
    conn = await asyncpg.connect(dsn)  # the owning role: FORCE ROW LEVEL SECURITY holds it too
    try:
        assert await conn.fetchval("SELECT count(*) FROM outbound_messages") == 0  # no numbers set: nothing
        async with conn.transaction():
            await conn.execute("SELECT set_config('store.numbers', $1, true)", NUMBER_A)
            rows = await conn.fetch("SELECT request_id FROM outbound_messages")
            assert [r["request_id"] for r in rows] == ["req_a"]
            assert await conn.fetchval("SELECT count(*) FROM status_events") == 3
    finally:
        await conn.close()


async def test_migrations_run_once_and_a_second_open_changes_nothing(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.dsn(postgres_server.new_database())
    for _ in range(2):
        backend = PostgresBackend(dsn)
        await backend.open()
        await backend.close()
    conn = await asyncpg.connect(dsn)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM store_migrations ORDER BY version")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_store(server: PostgresServer) -> AsyncIterator[tuple[PostgresBackend, str]]:
    """A backend opened on a new database, and that database's DSN."""
    dsn = server.dsn(server.new_database())
    backend = PostgresBackend(dsn)
    await backend.open()
    try:
        yield backend, dsn
    finally:
        await backend.close()


@contextlib.asynccontextmanager
async def connection(dsn: str, **options: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn, **options)
    try:
        yield conn
    finally:
        await conn.close()


async def test_text_search_reads_its_gin_index_under_row_level_security(postgres_server: PostgresServer) -> None:
    """A policy keeps `@@` out of index scans on its table; the search must not become a full scan."""
    async with fresh_store(postgres_server) as (backend, dsn):
        await backend.apply(project([*delivered_chain("req_a", "wamid.a", number=NUMBER_A),
                                     *delivered_chain("req_b", "wamid.b", number=NUMBER_B)])[0])
        for search in (Search(words=("order",)), Search(words=("order",), status_rank=1)):
            sql, args = search_sql(search, Scope(frozenset({NUMBER_A})))
            async with connection(dsn) as conn, conn.transaction():
                await conn.execute("SET LOCAL enable_seqscan = off")
                await conn.execute("SELECT set_config('store.numbers', $1, true)", NUMBER_A)
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
            assert "Bitmap Index Scan on outbound_search_p" in plan, plan
        async with connection(dsn) as conn:  # every day's index keeps the short pending list
            options = [r[0] for r in await conn.fetch(
                "SELECT reloptions FROM pg_class WHERE relname LIKE 'outbound_search_p%search_idx'")]
        assert options
        assert all(o == ["gin_pending_list_limit=512"] for o in options), options


async def test_a_search_sees_only_the_callers_numbers_and_follows_erasure(postgres_server: PostgresServer) -> None:
    async with fresh_store(postgres_server) as (backend, dsn), connection(dsn) as conn:
        await backend.apply(project([*delivered_chain("req_a", "wamid.a", number=NUMBER_A),
                                     *delivered_chain("req_b", "wamid.b", number=NUMBER_B, to="16505550000")])[0])
        words = Search(words=("order",))
        assert [m.request_id for m in await backend.search(words, Scope(frozenset({NUMBER_A})))] == ["req_a"]
        assert {m.request_id for m in await backend.search(words, Scope(None))} == {"req_a", "req_b"}
        assert await conn.fetchval("SELECT count(*) FROM outbound_search") == 2
        await backend.erase(CONTACT, Scope(None))
        assert await conn.fetchval("SELECT count(*) FROM outbound_search") == 1
        assert [m.request_id for m in await backend.search(words, Scope(None))] == ["req_b"]


async def test_a_common_words_search_answers_like_a_rare_ones(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every word counts as common (the time walk instead of the index): the same answers, page for page."""
    monkeypatch.setattr(postgres, "COMMON_MATCHES", 0)
    async with fresh_store(postgres_server) as (backend, _):
        await shared.test_search_by_words_prefix_recipient_status_and_time(backend)


async def test_a_database_of_migration_3_gets_its_words_carried_over(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.dsn(postgres_server.new_database())
    async with connection(dsn, server_settings={"store.numbers": "*"}) as conn:
        # the schema and a message as a store of the previous version left them
        await conn.execute("CREATE TABLE store_migrations (version integer PRIMARY KEY, applied_at timestamptz"
                           " NOT NULL DEFAULT now())")
        for version, sql in enumerate(MIGRATIONS[:3], start=1):
            await conn.execute(sql)
            await conn.execute("INSERT INTO store_migrations (version) VALUES ($1)", version)
        await conn.execute(f"CREATE TABLE outbound_messages_p{T0:%Y%m%d} PARTITION OF outbound_messages"
                           f" FOR VALUES FROM ('{T0:%Y-%m-%d}') TO ('{T0 + timedelta(days=1):%Y-%m-%d}')")
        await conn.execute("INSERT INTO outbound_messages (request_id, created_at, phone_number_id, wa_id, text)"
                           " VALUES ('req_old', $1, $2, $3, 'Your order 4242 shipped')", T0, NUMBER_A, CONTACT)
    backend = PostgresBackend(dsn)
    await backend.open()
    try:
        found = await backend.search(Search(words=("4242",)), Scope(frozenset({NUMBER_A})))
        assert [m.request_id for m in found] == ["req_old"]
        await backend.apply(project(delivered_chain("req_new", "wamid.new", accepted=T0))[0])  # the trigger
        found = await backend.search(Search(words=("order",)), Scope(frozenset({NUMBER_A})))
        assert [m.request_id for m in found] == ["req_old", "req_new"]  # same time: by request id, descending
    finally:
        await backend.close()
