"""The store's fixtures: a real PostgreSQL server for the session, and one backend per test on each engine.

    async def test_x(backend):            # runs twice: SQLite file, then PostgreSQL (fresh database each)
        await backend.apply(changes)

The server comes from Debian's `postgresql` package (`make setup` installs it), started by
`pipeline.local.postgres.LocalPostgres` on a free port, as the `postgres` OS user when the tests run as
root (initdb refuses root). A missing binary fails the session: PostgreSQL is part of the repo's stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pipeline.local.postgres import LocalPostgres
from pipeline.store.backend import Backend
from pipeline.store.postgres import PostgresBackend
from pipeline.store.sqlite import SqliteBackend

PostgresServer = LocalPostgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    server = LocalPostgres.create()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    store: Backend
    if request.param == "sqlite":
        store = SqliteBackend(tmp_path / "store.db")
    else:
        server: LocalPostgres = request.getfixturevalue("postgres_server")
        store = PostgresBackend(server.dsn(server.new_database()))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
