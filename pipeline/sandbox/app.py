"""Assemble the sandbox's aiohttp application and run it.

    app = create_app(settings.sandbox)          # for in-process tests (aiohttp's TestServer, AppRunner)
    await serve(settings)                       # `pipeline sandbox`: runs until cancelled

aiohttp.web rather than uvicorn + Starlette, by measurement (`bench/sandbox.py --stacks`, figures in
BENCHMARKS.md): the same bare handler reached the same throughput on both (within noise), and
aiohttp's server spent less CPU per request in every run (uvicorn needed 7-40 % more; it runs h11
here, httptools is not installed). aiohttp also parses multipart uploads itself, where Starlette
needs python-multipart.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import sys
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.config import Settings
from pipeline.sandbox import control, graph
from pipeline.sandbox.graph import STATE
from pipeline.sandbox.media import MAX_UPLOAD_BYTES
from pipeline.sandbox.settings import SandboxSettings
from pipeline.sandbox.state import SandboxState

log = logging.getLogger("pipeline.sandbox")


def create_app(settings: SandboxSettings, *, rng: random.Random | None = None) -> web.Application:
    """The whole sandbox as one aiohttp app; `rng` makes latency and webhook dice repeatable in tests."""
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES + 1024 * 1024)
    state = SandboxState(settings, rng)
    app[STATE] = state

    async def dispatcher(_: web.Application) -> AsyncIterator[None]:
        await state.webhooks.start()
        yield
        await state.webhooks.stop()

    app.cleanup_ctx.append(dispatcher)
    # Control and ops routes first: "/{version}/{object_id}" would otherwise swallow "/_sandbox/stats".
    app.add_routes([
        web.get("/metrics", _metrics), web.get("/healthz", _healthz), web.get("/readyz", _healthz), *control.routes()
    ])
    app.add_routes(graph.routes())
    # Last: any other path or method gets Graph's JSON error (code 2500), never aiohttp's text 404.
    app.router.add_route("*", "/{tail:.*}", graph.not_found)
    return app


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"status": "ok"}), content_type="application/json")


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Listen on host:port (0 picks a free port); returns the runner and the bound port."""
    # handler_cancellation: a client that gives up on a held answer (the 'timeout' scenario or
    # outage) frees the handler at once instead of 35 s later.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def serve(settings: Settings) -> None:
    """Run on settings.sandbox.host/port until cancelled."""
    _configure_logging(settings.log.level)
    sandbox = settings.sandbox
    runner, port = await start(create_app(sandbox), sandbox.host, sandbox.port)
    # What exists now (modules, the app, its routes) lives as long as the process; frozen, full
    # collections stop rescanning it (~54,000 objects: a gen2 pass over them alone took ~17 ms). The
    # sandbox counts Meta's one-second windows by the time its handlers run, so a pause is an error
    # in what it measures.
    gc.collect()
    gc.freeze()
    log.info(
        "sandbox listening",
        extra={"url": f"http://{sandbox.host}:{port}", "webhook_url": sandbox.webhook_url,
               "rate_per_second": sandbox.rate_per_second, "latency_median_seconds": sandbox.latency_median_seconds},
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class _JsonFormatter(logging.Formatter):
    # The project's structured logging lives in pipeline.observability, which imports the contracts;
    # the sandbox must not, so it writes the same one-JSON-object-per-line shape itself.
    _SKIP = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "stage": "sandbox",
            **{k: v for k, v in vars(record).items() if k not in self._SKIP},
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if root.handlers:  # somebody (a test runner, an embedding process) already decided
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
