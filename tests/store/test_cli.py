"""`pipeline messages show|history|search` against a running read API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from pydantic import SecretStr
from typer.testing import CliRunner

from pipeline.auth import ApiKeys
from pipeline.cli import app
from pipeline.config import ApiKey
from pipeline.local.kafka import free_port
from pipeline.store.crypto import Sealer
from pipeline.store.http import Reader, create_app
from pipeline.store.projection import project
from pipeline.store.sqlite import SqliteBackend
from pipeline.store.telemetry import StoreTelemetry
from tests.store.records import CONTACT, at, delivered_chain, inbound, result

KEY = "cli-test-key"


async def _ready() -> list[str]:
    return []


@pytest.fixture
async def store_url(tmp_path: Path) -> AsyncIterator[str]:
    backend = SqliteBackend(tmp_path / "store.db")
    await backend.open()
    changes, _ = project([*delivered_chain("req_cli", "wamid.cli"), inbound("wamid.in.cli", at(60)),
                          result("req_fail", None, outcome="failed", error={
                              "code": 131026, "title": "Message undeliverable", "error_class": "undeliverable"})])
    await backend.apply(changes)
    keys = ApiKeys([ApiKey(key=SecretStr(KEY), phone_number_ids=frozenset(["*"]))])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Reader(backend, Sealer(None)), keys, StoreTelemetry(), _ready),
                                           host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await backend.close()


async def _run(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


async def test_show_prints_the_outcome_and_the_timeline(store_url: str) -> None:
    code, out = await _run("messages", "show", "req_cli", "--api-url", store_url, "--api-key", KEY)
    assert code == 0, out
    for expected in ("req_cli", "read", "wamid.cli", "delivered", "2026-12-01T10:00:05Z", "Your order 12345 shipped"):
        assert expected in out
    code, out = await _run("messages", "show", "req_fail", "--api-url", store_url, "--api-key", KEY)
    assert "131026" in out
    assert "undeliverable" in out


async def test_history_and_search_print_tables_and_errors_exit_1(store_url: str) -> None:
    code, out = await _run("messages", "history", f"+{CONTACT}", "--api-url", store_url, "--api-key", KEY)
    assert code == 0, out
    assert out.index("wamid.in.cli") < out.index("req_cli")  # newest first
    code, out = await _run("messages", "search", "order", "--status", "read", "--api-url", store_url,
                           "--api-key", KEY)
    assert code == 0, out
    assert "req_cli" in out
    assert "1 message(s)" in out
    code, out = await _run("messages", "show", "req_missing", "--api-url", store_url, "--api-key", KEY)
    assert code == 1
    assert "404" in out
    code, out = await _run("messages", "search", "--status", "lost", "--api-url", store_url, "--api-key", KEY)
    assert code == 1
    assert "status" in out
