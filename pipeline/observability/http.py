"""`/metrics`, `/healthz` and `/readyz` for every stage.

    routes = ops_routes(ready=lambda: consumer.assigned())   # mount on the stage's own app, or
    await serve_ops(host, port, ready)                       # a small server for consumer stages
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.observability.metrics import registry

ReadyCheck = Callable[[], bool | Awaitable[bool]]


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text by default; OpenMetrics (with trace_id exemplars) when the scraper asks."""
    if "application/openmetrics-text" in request.headers.get("accept", ""):
        return Response(generate_openmetrics(registry), media_type=OPENMETRICS_TYPE)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def ops_routes(ready: ReadyCheck) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        result = ready()
        ok = await result if inspect.isawaitable(result) else result
        return JSONResponse({"ready": bool(ok)}, status_code=200 if ok else 503)

    return [
        Route("/metrics", metrics_endpoint),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]


async def serve_ops(host: str, port: int, ready: ReadyCheck) -> None:
    """Serve the ops routes until cancelled (for stages that have no HTTP server of their own)."""
    config = uvicorn.Config(Starlette(routes=ops_routes(ready)), host=host, port=port, log_config=None,
                            access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        await server.serve()
    except asyncio.CancelledError:
        server.should_exit = True
        raise
