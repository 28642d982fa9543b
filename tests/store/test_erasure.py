"""Erasure leaves no trace of the contact: not in any table of either engine, not in SQLite's file."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from pipeline.store.backend import ALL
from pipeline.store.postgres import PostgresBackend
from pipeline.store.projection import project
from pipeline.store.sqlite import SqliteBackend
from tests.store.conftest import PostgresServer
from tests.store.records import at, delivered_chain, inbound, request

SECRET_TEXT = "zanzibarquokka"  # a word that occurs nowhere else
CONTACT = "16505559876"
OTHER = "447700900123"


def _records() -> list:  # type: ignore[type-arg]
    records = []
    for n in range(30):  # enough rows that the FTS index has several segments
        records += delivered_chain(f"req_keep_{n}", f"wamid.keep.{n}", to=OTHER)
    chain = [request("req_erase", to=CONTACT, text=f"{SECRET_TEXT} parcel"),
             *delivered_chain("req_erase", "wamid.erase", to=CONTACT)[1:]]
    return [*records, *chain, inbound("wamid.in.erase", at(60), sender=CONTACT, text=f"{SECRET_TEXT} reply")]


async def test_sqlite_erasure_leaves_nothing_in_the_file_the_wal_or_the_fts_tables(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    backend = SqliteBackend(path)
    await backend.open()
    try:
        changes, _ = project(_records())
        await backend.apply(changes)
        files = [path, path.with_name("store.db-wal")]
        assert any(SECRET_TEXT.encode() in f.read_bytes() for f in files if f.exists())
        erased = await backend.erase(CONTACT, ALL)
        assert (erased.outbound, erased.inbound) == (1, 1)
        for f in files:
            if f.exists():
                raw = f.read_bytes()
                assert SECRET_TEXT.encode() not in raw, f"erased text left in {f.name}"
                assert CONTACT.encode() not in raw, f"erased number left in {f.name}"
        assert await backend.message("req_keep_0", ALL) is not None
    finally:
        await backend.close()


async def test_postgres_erasure_leaves_the_contact_in_no_table(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.dsn(postgres_server.new_database())
    backend = PostgresBackend(dsn)
    await backend.open()
    try:
        changes, _ = project(_records())
        await backend.apply(changes)
        assert await _tables_mentioning(dsn, SECRET_TEXT)
        await backend.erase(CONTACT, ALL)
        assert await _tables_mentioning(dsn, SECRET_TEXT) == []
        assert await _tables_mentioning(dsn, CONTACT) == []
        assert await _tables_mentioning(dsn, OTHER)  # the other contact is untouched
    finally:
        await backend.close()


async def _tables_mentioning(dsn: str, needle: str) -> list[str]:
    """Every table (partitions included) with a row whose text form contains `needle`."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('store.numbers', '*', true)")
            tables = [r["relname"] for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')")]
            found = []
            for table in tables:
                hit = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} t WHERE t::text LIKE $1)",
                                          f"%{needle}%")
                if hit:
                    found.append(table)
            return sorted(found)
    finally:
        await conn.close()
