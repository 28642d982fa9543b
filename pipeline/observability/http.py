"""HTTP side of observability: `/metrics`, `/healthz`, `/readyz`, uvicorn's logs.

    app = FastAPI(routes=ops_routes(ready=lambda: consumer.assignment() != set()))
    server = uvicorn.Server(uvicorn_config(app, host, port)) # uvicorn's logs go through the JSON formatter
    async with OpsServer(host, 0, ready) as ops: ops.port   # consumer stages without an HTTP server
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import uvicorn
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.observability.metrics import registry

# How long an idle keep-alive connection stays open, as aiohttp's server and nginx keep it. uvicorn's
# default (5 s) equals httpx's client expiry, so a client could reuse a connection in the instant the
# server closed it and read a reset (seen in CI: `httpx.ReadError` on a burst of POSTs to the API after
# ~5 s idle). Servers must outlive their clients' idle expiry, and a load balancer's (AWS ALB: 60 s).
KEEP_ALIVE_SECONDS = 75

ReadyCheck = Callable[[], bool | Awaitable[bool]]
ReadyDetails = Callable[[], dict[str, Any]]  # extra fields of /readyz's body (e.g. a restore's progress)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text by default; OpenMetrics (with trace_id exemplars) when the scraper asks."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), headers={"Content-Type": content_type})


def ops_routes(ready: ReadyCheck, details: ReadyDetails | None = None) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        result = ready()
        ok = await result if inspect.isawaitable(result) else result
        body = {"ready": bool(ok), **(details() if details is not None else {})}
        return JSONResponse(body, status_code=200 if ok else 503)

    return [
        Route("/metrics", metrics_endpoint),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]


def uvicorn_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """A uvicorn config whose logs (access lines included) go through the pipeline's JSON formatter.

    uvicorn's default `log_config` installs plain-text handlers; `None` leaves logging to `setup()`.
    Idle connections are kept `KEEP_ALIVE_SECONDS`, longer than clients and load balancers keep theirs.
    """
    options.setdefault("lifespan", "off")
    options.setdefault("timeout_keep_alive", KEEP_ALIVE_SECONDS)
    return uvicorn.Config(app, host=host, port=port, log_config=None, **options)


class OpsServer:
    """`ops_routes` on their own small server; `port` is the bound port (useful with port 0)."""

    def __init__(self, host: str, port: int, ready: ReadyCheck, details: ReadyDetails | None = None) -> None:
        self.host = host
        self._socket = socket.create_server((host, port), family=_family(host))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn_config(Starlette(routes=ops_routes(ready, details)), host, self.port, access_log=False)
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        """Serve until cancelled."""
        try:
            await self._server.serve(sockets=[self._socket])
        except asyncio.CancelledError:
            self._server.should_exit = True
            raise
        finally:
            self._socket.close()

    async def __aenter__(self) -> OpsServer:
        self._task = asyncio.create_task(self.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
