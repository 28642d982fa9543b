"""Fixtures for the sandbox's tests: a running sandbox, an HTTP client, and a webhook receiver.

    async def test_x(sandbox, http, receiver): ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from pipeline.sandbox.testing import SandboxHandle, running_sandbox

NUMBER = "106540352242922"
USER = "16505551234"


def text_body(to: str = USER, body: str = "hello", request_id: str | None = "req-1") -> dict[str, Any]:
    message: dict[str, Any] = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": body}}
    if request_id is not None:
        message["biz_opaque_callback_data"] = request_id
    return message


@dataclass
class Received:
    raw: bytes
    signature: str | None
    sha1_signature: str | None = None
    user_agent: str | None = None

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.raw)
        return parsed

    def statuses(self) -> list[dict[str, Any]]:
        return [s for e in self.json()["entry"] for c in e["changes"] for s in c["value"].get("statuses", [])]


@dataclass
class WebhookReceiver:
    """Records every webhook POST with its raw bytes; answers `fail_next` of them with 500."""

    url: str = ""
    posts: list[Received] = field(default_factory=list)
    fail_next: int = 0
    failed: int = 0
    verify_token: str = "verify-me"
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def statuses(self) -> list[dict[str, Any]]:
        return [s for post in self.posts for s in post.statuses()]

    async def wait_statuses(self, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within):
            while len(self.statuses()) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.statuses()

    async def wait_posts(self, count: int, within: float = 5.0) -> list[Received]:
        async with asyncio.timeout(within):
            while len(self.posts) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.posts


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    state = WebhookReceiver()

    async def post(request: web.Request) -> web.Response:
        raw = await request.read()
        if state.fail_next > 0:
            state.fail_next -= 1
            state.failed += 1
            return web.Response(status=500)
        headers = request.headers
        state.posts.append(Received(raw, headers.get("X-Hub-Signature-256"), headers.get("X-Hub-Signature"),
                                    headers.get("User-Agent")))
        state.arrived.set()
        return web.Response(status=200)

    async def verify(request: web.Request) -> web.Response:
        if request.query.get("hub.mode") == "subscribe" and request.query.get("hub.verify_token") == state.verify_token:
            return web.Response(text=request.query.get("hub.challenge", ""))
        return web.Response(status=403)

    app = web.Application()
    app.add_routes([web.post("/webhooks/whatsapp", post), web.get("/webhooks/whatsapp", verify)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/whatsapp"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    async with running_sandbox() as handle:
        yield handle


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Graph:
    """A raw Graph API caller for tests (the sandbox is tested without the project's client)."""

    def __init__(self, sandbox: SandboxHandle, http: aiohttp.ClientSession) -> None:
        self.sandbox = sandbox
        self.http = http
        self.headers = {"Authorization": f"Bearer {sandbox.access_token}"}

    async def send(self, body: Any, number: str = NUMBER, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        headers = kwargs.pop("headers", self.headers)
        async with self.http.post(self.sandbox.messages_url(number), json=body, headers=headers, **kwargs) as r:
            return r.status, await r.json()


@pytest.fixture
def graph(sandbox: SandboxHandle, http: aiohttp.ClientSession) -> Graph:
    return Graph(sandbox, http)
