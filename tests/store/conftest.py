"""The store's fixtures: a real PostgreSQL server for the session, and one backend per test on each engine.

    async def test_x(backend):            # runs twice: SQLite file, then PostgreSQL (fresh database each)
        await backend.apply(changes)

The server comes from Debian's `postgresql` package (`make setup` installs it): `initdb` into a temp
directory and `pg_ctl start` on a free port, as the `postgres` OS user when the tests run as root
(initdb refuses root). A missing binary fails the session: PostgreSQL is part of the repo's stack.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from pipeline.local.kafka import free_port
from pipeline.store.backend import Backend
from pipeline.store.postgres import PostgresBackend
from pipeline.store.sqlite import SqliteBackend

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
STORE_ROLE = "store"
STORE_PASSWORD = "store-test-password"


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    as_user: list[str]

    def dsn(self, database: str) -> str:
        return f"postgresql://{STORE_ROLE}:{STORE_PASSWORD}@127.0.0.1:{self.port}/{database}"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", *args],
            check=check, capture_output=True,
        )

    def start(self) -> None:
        self.ctl("-l", str(self.data_dir / "server.log"), "-o", f"-p {self.port} -k {self.data_dir}", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop", check=False)

    async def new_database(self) -> str:
        name = f"store_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name} OWNER {STORE_ROLE}")
        finally:
            await conn.close()
        return name


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    assert (PG_BIN / "initdb").exists(), f"PostgreSQL is missing ({PG_BIN}/initdb): run `make setup`"
    # Not under pytest's temp root: that is 0700 root, which the server's user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="store-postgres-"))
    data = base / "data"
    as_user = _unprivileged()
    if as_user:
        shutil.chown(base, "postgres")
    subprocess.run(
        [*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync"],
        check=True, capture_output=True,
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("listen_addresses = '127.0.0.1'\nfsync = off\nshared_buffers = 64MB\nmax_connections = 200\n")
    server = PostgresServer(data, free_port(), as_user)
    server.start()
    try:
        subprocess.run(
            [*as_user, str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
             "-c", f"CREATE ROLE {STORE_ROLE} LOGIN PASSWORD '{STORE_PASSWORD}'"],
            check=True, capture_output=True,
        )
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A fresh database owned by the unprivileged `store` role (row-level security applies to it)."""
    return postgres_server.dsn(await postgres_server.new_database())


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    store: Backend
    if request.param == "sqlite":
        store = SqliteBackend(tmp_path / "store.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        store = PostgresBackend(server.dsn(await server.new_database()))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
