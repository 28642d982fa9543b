"""Start a sandbox for a test or a benchmark, and steer it over HTTP.

    async with running_sandbox(rate_per_second=1000, webhook_url=receiver_url) as sandbox:
        client = MyClient(base_url=sandbox.base_url, token=sandbox.access_token)
        await sandbox.control.outage("error")          # every Graph call now answers 503 (code 2)
        await sandbox.control.end_outage()
        stats = await sandbox.control.stats()           # received by outcome, max per-second windows, ...

Defaults differ from `pipeline sandbox` in one way: latency is 0 unless you pass `latency_median_seconds`.
`in_subprocess=True` runs it as `python -m pipeline sandbox` (its own CPU, for benchmarks); the handle's
`pid` is then set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import SecretStr

from pipeline.sandbox.app import create_app, start
from pipeline.sandbox.settings import SandboxSettings


class SandboxControl:
    """Async helper for the /_sandbox/ control endpoints (docs/sandbox.md)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base = base_url
        self._session = session

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        query = {k: str(v) for k, v in params.items() if v is not None}
        async with self._session.request(method, f"{self._base}/_sandbox/{path}", json=body, params=query) as r:
            payload = await r.json()
            if r.status >= 400:
                raise SandboxControlError(r.status, str(payload.get("error", payload)))
            return payload

    async def configure(self, **changes: Any) -> dict[str, Any]:
        """Change any SandboxSettings field but host/port at run time; returns the new configuration."""
        result: dict[str, Any] = await self._call("PATCH", "config", changes)
        return result

    async def config(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "config")
        return result

    async def set_rate(self, per_second: float, phone_number_id: str | None = None) -> None:
        """The throughput cap (130429 past it), for every number or for one."""
        if phone_number_id is None:
            await self.configure(rate_per_second=per_second)
        else:
            overrides = dict((await self.config())["rate_overrides"])
            overrides[phone_number_id] = per_second
            await self.configure(rate_overrides=overrides)

    async def set_pair_limit(self, burst: int, interval_seconds: float) -> None:
        """131056 past `burst` messages to one recipient, then one per `interval_seconds` (0 turns it off)."""
        await self.configure(pair_burst=burst, pair_interval_seconds=interval_seconds)

    async def set_latency(self, median_seconds: float, sigma: float | None = None) -> None:
        changes: dict[str, Any] = {"latency_median_seconds": median_seconds}
        if sigma is not None:
            changes["latency_sigma"] = sigma
        await self.configure(**changes)

    async def outage(self, mode: str = "error", phone_number_id: str | None = None) -> None:
        """Start an outage: 'error' (503, code 2), 'timeout' (no answer for hang_seconds) or 'disconnect'."""
        await self._call("POST", "outage", {"mode": mode, "phone_number_id": phone_number_id})

    async def end_outage(self, phone_number_id: str | None = None) -> None:
        await self._call("DELETE", "outage", phone_number_id=phone_number_id)

    async def reset(self) -> None:
        """Start-up configuration, no history, no outage, no media, no pending webhook."""
        await self._call("POST", "reset")

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "stats")
        return result

    async def sends(self, phone_number_id: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """Accepted sends in order: seq, phone_number_id, to, request_id, wamid, type, scenario, at."""
        result: list[dict[str, Any]] = (await self._call("GET", "sends", phone_number_id=phone_number_id,
                                                         after=after))["sends"]
        return result

    async def webhooks(self) -> dict[str, Any]:
        """{"summary": {...}, "deliveries": [{at, attempt, answer, ok, statuses, ...}]}"""
        result: dict[str, Any] = await self._call("GET", "webhooks")
        return result

    async def wait_webhooks_idle(self, within: float = 10.0) -> dict[str, Any]:
        """Wait until every scheduled webhook was acknowledged (or given up); returns the summary."""
        deadline = time.monotonic() + within
        while True:
            summary: dict[str, Any] = (await self.webhooks())["summary"]
            if summary["pending"] == 0:
                return summary
            if time.monotonic() > deadline:
                raise TimeoutError(f"webhooks still pending after {within} s: {summary}")
            await asyncio.sleep(0.05)

    async def media(self) -> dict[str, Any]:
        """{"uploads": n, "uploads_by_sha256": {sha256: n}, "items": [...]}"""
        result: dict[str, Any] = await self._call("GET", "media")
        return result

    async def expire_media(self, media_id: str) -> None:
        await self._call("POST", f"media/{media_id}/expire")

    async def inbound_text(
        self, from_: str, text: str, phone_number_id: str, *, name: str | None = None,
        context_message_id: str | None = None, hide_number: bool = False,
    ) -> str:
        """Post a user's text message to the webhook; returns its wamid. `hide_number`: BSUID only."""
        body = {"from": from_, "text": text, "phone_number_id": phone_number_id, "name": name,
                "context_message_id": context_message_id, "hide_number": hide_number}
        wamid: str = (await self._call("POST", "inbound", body))["id"]
        return wamid

    async def inbound_button_reply(
        self, from_: str, button_id: str, title: str, phone_number_id: str, *, context_message_id: str,
        name: str | None = None,
    ) -> str:
        body = {"from": from_, "button_reply": {"id": button_id, "title": title}, "phone_number_id": phone_number_id,
                "name": name, "context_message_id": context_message_id}
        wamid: str = (await self._call("POST", "inbound", body))["id"]
        return wamid

    async def verify_webhook(self, verify_token: str) -> dict[str, Any]:
        """Run Meta's GET hub.challenge handshake against the webhook URL; `verified` says if it passed."""
        result: dict[str, Any] = await self._call("POST", "webhook-verify", {"verify_token": verify_token})
        return result


class SandboxControlError(Exception):
    def __init__(self, status: int, problem: str) -> None:
        super().__init__(f"sandbox control answered {status}: {problem}")
        self.status = status
        self.problem = problem


@dataclass(frozen=True)
class SandboxHandle:
    base_url: str  # e.g. http://127.0.0.1:41234 — the Graph API base URL to give a client
    settings: SandboxSettings
    control: SandboxControl
    pid: int | None = None  # set when it runs in a subprocess

    @property
    def access_token(self) -> str:
        return self.settings.access_token.get_secret_value()

    @property
    def app_secret(self) -> str:
        return self.settings.app_secret.get_secret_value()

    def messages_url(self, phone_number_id: str, version: str = "v23.0") -> str:
        return f"{self.base_url}/{version}/{phone_number_id}/messages"

    def media_url(self, phone_number_id: str, version: str = "v23.0") -> str:
        return f"{self.base_url}/{version}/{phone_number_id}/media"


@contextlib.asynccontextmanager
async def running_sandbox(*, in_subprocess: bool = False, **overrides: Any) -> AsyncIterator[SandboxHandle]:
    """A sandbox on a free port of 127.0.0.1; `overrides` are SandboxSettings fields."""
    values: dict[str, Any] = {"latency_median_seconds": 0.0, **overrides, "host": "127.0.0.1", "port": 0}
    settings = SandboxSettings(**values)
    async with aiohttp.ClientSession() as session:
        if in_subprocess:
            async with _subprocess(settings) as (base_url, pid):
                yield SandboxHandle(base_url, settings, SandboxControl(base_url, session), pid)
        else:
            runner, port = await start(create_app(settings), "127.0.0.1", 0)
            base_url = f"http://127.0.0.1:{port}"
            try:
                yield SandboxHandle(base_url, settings, SandboxControl(base_url, session))
            finally:
                await runner.cleanup()


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


@contextlib.asynccontextmanager
async def _subprocess(settings: SandboxSettings) -> AsyncIterator[tuple[str, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"SANDBOX_{name.upper()}"] = _env_value(value)
    env["LOG_LEVEL"] = "INFO"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "sandbox", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    drain: asyncio.Task[None] | None = None
    try:
        url = await asyncio.wait_for(_listening_url(process.stdout), timeout=30)
        drain = asyncio.create_task(_drain(process.stdout))  # a full pipe would block the child
        yield url, process.pid
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()


async def _listening_url(stream: asyncio.StreamReader) -> str:
    seen: list[str] = []
    while line := await stream.readline():
        text = line.decode(errors="replace").strip()
        seen.append(text)
        with contextlib.suppress(ValueError):
            event = json.loads(text)
            if isinstance(event, dict) and event.get("event") == "sandbox listening":
                return str(event["url"])
    raise RuntimeError("the sandbox subprocess exited before listening:\n" + "\n".join(seen[-20:]))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
