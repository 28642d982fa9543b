"""A real HTTP receiver for callbacks: records every call, answers as told, can go down and come back.

    async with Receiver(secret) as receiver:       # 127.0.0.1 on a free port, fixed across restarts
        receiver.url                                # "http://127.0.0.1:41234/hook"
        receiver.status, receiver.delay = 503, 0.0  # how it answers from now on
        await receiver.down(); await receiver.up()  # connections refused in between
        await receiver.wait_for(lambda calls: len(calls) >= 3)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from pipeline.local.kafka import free_port
from pipeline.notify.signing import HEADER, SignatureError, verify


@dataclass(frozen=True)
class Call:
    at: float
    body: bytes
    headers: dict[str, str]
    signed: bool

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


class Receiver:
    def __init__(self, secret: str, *, status: int = 200, delay: float = 0.0) -> None:
        self.secret = secret
        self.status = status
        self.delay = delay
        self.headers: dict[str, str] = {}
        self.port = free_port()
        self.calls: list[Call] = []  # answered with `status` (2xx: delivered)
        self.refused = 0
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def subscription(self, phone_number_id: str = "*", **extra: Any) -> dict[str, Any]:
        return {"phone_number_id": phone_number_id, "url": self.url, "secret": self.secret, **extra}

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            verify(self.secret, body, request.headers.get(HEADER, ""))
            signed = True
        except SignatureError:
            signed = False
        if 200 <= self.status < 300:
            self.calls.append(Call(time.monotonic(), body, {k.lower(): v for k, v in request.headers.items()}, signed))
        else:
            self.refused += 1
        self._changed.set()
        return web.Response(status=self.status, headers=self.headers, text="nope" if self.status >= 300 else "")

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        await self.up()
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.down()

    def events(self) -> list[dict[str, Any]]:
        return [c.event for c in self.calls]

    async def wait_for(self, done: Callable[[list[Call]], bool], timeout: float = 60.0) -> list[Call]:
        async with asyncio.timeout(timeout):
            while not done(self.calls):
                self._changed.clear()
                with_timeout = asyncio.wait_for(self._changed.wait(), 0.5)
                with contextlib.suppress(TimeoutError):
                    await with_timeout
        return self.calls
