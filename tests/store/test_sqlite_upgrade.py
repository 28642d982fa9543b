"""A store file written by an older version opens, is upgraded in place, and keeps what it held."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pipeline.store.backend import ALL
from pipeline.store.projection import project
from pipeline.store.sqlite import _SCHEMA, SCHEMA_VERSION, SqliteBackend
from tests.store.records import delivered_chain, result


def _version_1_file(path: Path) -> None:
    """The schema as version 1 wrote it: no `trace_id` column."""
    schema = _SCHEMA.replace("    trace_id TEXT,\n", "")
    assert schema != _SCHEMA, "the version-1 schema is the current one without trace_id"
    with sqlite3.connect(path) as conn:
        conn.executescript(schema)
        conn.execute("PRAGMA user_version=1")


async def test_a_version_1_file_gains_the_trace_id_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _version_1_file(path)
    old = SqliteBackend(path)
    with sqlite3.connect(path) as conn:  # a row written by version 1, through its own columns
        conn.execute("INSERT INTO outbound_messages (request_id, created_at, outcome) VALUES ('req_old', 0, 'sent')")
    await old.open()
    try:
        changes, rejects = project([*delivered_chain("req_new", "wamid.N"),
                                    result("req_new", "wamid.N", traceparent=f"00-{'ab' * 16}-{'cd' * 8}-01")])
        assert rejects == []
        await old.apply(changes)
        kept, new = await old.message("req_old", ALL), await old.message("req_new", ALL)
        assert kept is not None
        assert kept[0].outcome == "sent"
        assert kept[0].trace_id is None
        assert new is not None
        assert new[0].trace_id == "ab" * 16
        assert new[0].status == "read"
    finally:
        await old.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
