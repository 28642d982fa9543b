"""A throwaway PostgreSQL server from Debian's `postgresql` package, for tests and benchmarks.

    server = LocalPostgres.create()        # initdb in a temp dir, free port, role `store`
    server.start()
    dsn = server.dsn(server.new_database())   # a fresh database owned by the unprivileged role
    server.stop(); server.remove()

initdb refuses to run as root: as root, the server runs as the `postgres` OS user (runuser), so this
works the same on a developer's machine and in CI. `make setup` installs the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.local.kafka import free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
ROLE = "store"
PASSWORD = "store-local-password"  # noqa: S105 — a throwaway server's password


def _as_server_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class LocalPostgres:
    base: Path
    port: int
    as_user: list[str]

    @classmethod
    def create(cls) -> LocalPostgres:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(f"PostgreSQL is missing ({PG_BIN}/initdb): run `make setup`")
        # Not under a 0700 root-owned temp root (pytest's): the server's user must enter it.
        base = Path(tempfile.mkdtemp(prefix="store-postgres-"))
        as_user = _as_server_user()
        if as_user:
            shutil.chown(base, "postgres")
        data = base / "data"
        subprocess.run(  # noqa: S603 — Debian's own binaries
            [*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            check=True, capture_output=True,
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("listen_addresses = '127.0.0.1'\nfsync = off\nshared_buffers = 128MB\n"
                       "max_connections = 200\n")
        return cls(base, free_port(), as_user)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def dsn(self, database: str) -> str:
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(  # noqa: S603
            [*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", *args],
            check=check, capture_output=True,
        )

    def start(self) -> None:
        self.ctl("-l", str(self.base / "server.log"), "-o", f"-p {self.port} -k {self.base}", "start")
        self.psql(f"DO $$ BEGIN CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}';"
                  " EXCEPTION WHEN duplicate_object THEN NULL; END $$")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop", check=False)

    def running(self) -> bool:
        return self.ctl("status", check=False).returncode == 0

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def psql(self, sql: str) -> None:
        subprocess.run(  # noqa: S603
            [*self.as_user, str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True,
        )

    def new_database(self) -> str:
        name = f"store_{uuid.uuid4().hex[:10]}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name
