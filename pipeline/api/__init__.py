"""The producer API: accept send requests over HTTP and publish them durably to Kafka.

    await serve(settings)        # `pipeline api`; runs until cancelled or SIGTERM

docs/api.md describes the routes, errors, idempotency and what a 202 promises.
"""

from __future__ import annotations

import gc
from typing import Any

import uvicorn

from pipeline.config import Settings
from pipeline.contracts import Stage
from pipeline.observability import get_logger, setup, uvicorn_config

log = get_logger(__name__)


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """uvicorn settings shared by `serve` and the tests: our JSON logs, no access log (metrics count requests)."""
    return uvicorn_config(
        app,
        settings.api.host,
        settings.api.port,
        access_log=False,
        lifespan="on",  # the app's lifespan connects to Kafka and flushes the producer on shutdown
        timeout_graceful_shutdown=max(5, int(settings.api.publish_timeout_seconds) + 2),
    )


async def serve(settings: Settings) -> None:
    """Serve until cancelled or SIGTERM; in-flight requests finish and the producer flushes first."""
    from pipeline.api.app import create_app
    from pipeline.api.service import ApiService

    telemetry = setup(Stage.API, settings)
    app = create_app(ApiService(settings, telemetry), telemetry)
    # Everything built so far lives as long as the process: keep the collector from rescanning it.
    # The API allocates per request, and full collections over the start-up heap cost more CPU than
    # some requests do (docs/api.md).
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(server_config(app, settings))
    log.info("api_starting", host=settings.api.host, port=settings.api.port)
    await server.serve()


__all__ = ["serve", "server_config"]
