"""`pipeline store`: the projection, the read API and the retention pass in one process.

    await serve(settings)           # until SIGTERM/SIGINT (or `stop` is set)

The HTTP server answers from the first moment (503 and /readyz reasons while the database or Kafka
is away); the database is opened with retries, then the subscriber starts. The retention pass runs
every STORE_RETENTION_INTERVAL_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from urllib.parse import urlsplit

import uvicorn
from aiokafka.errors import KafkaError

from pipeline.auth import ApiKeys
from pipeline.config import Settings
from pipeline.console.app import console_app
from pipeline.contracts.messages import utcnow
from pipeline.contracts.read_api import ROUTES
from pipeline.contracts.vocabulary import Stage
from pipeline.lifecycle import release_signals, stop_on_signals
from pipeline.observability import get_logger, setup, subscriber_consumers, track_lag
from pipeline.observability.http import uvicorn_config
from pipeline.observability.lag import measure_lag
from pipeline.observability.redaction import register_secrets
from pipeline.store.backend import Backend, BackendUnavailable, open_backend
from pipeline.store.consumer import Projector, dead_letter_sink, new_broker, subscribe
from pipeline.store.crypto import Sealer
from pipeline.store.http import Reader, create_app
from pipeline.store.telemetry import StoreTelemetry
from pipeline.topics import TopicCatalog

log = get_logger(__name__)

_READY_PING_SECONDS = 2.0


class StoreService:
    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend or open_backend(settings.store)
        self.hooks = StoreTelemetry(tuple(path for _, path, _ in ROUTES))
        self.sealer = Sealer(settings.store.encryption_key_bytes())
        self.telemetry = setup(Stage.STORE, settings)
        # The whole URL is a registered secret already; its password alone is one too (a driver's
        # message could quote it without the rest of the URL).
        register_secrets([urlsplit(settings.store.database_url.get_secret_value()).password])
        self.catalog = TopicCatalog(settings.kafka)
        self.broker = new_broker(settings, self.telemetry)
        self.projector = Projector(self.backend, self.sealer, self.hooks, self.catalog,
                                   dead_letter_sink(self.broker, self.catalog))
        self.subscriber = subscribe(self.broker, self.projector, settings)
        self.opened = False
        self.consuming = False
        self.open_error: str | None = None

    async def not_ready(self) -> list[str]:
        """Why the store is not ready; empty when it is."""
        reasons = []
        if not self.opened:
            reasons.append(f"database not open: {self.open_error or 'connecting'}")
        else:
            try:
                async with asyncio.timeout(_READY_PING_SECONDS):
                    await self.backend.ping()
            except (BackendUnavailable, TimeoutError) as exc:
                reasons.append(f"database unavailable: {exc or 'no answer in 2 s'}")
        if self.projector.database_error:
            reasons.append(f"projection waiting for the database: {self.projector.database_error}")
        if not self.consuming:
            reasons.append("kafka subscriber not started")
        return reasons

    async def open_database(self, stop: asyncio.Event) -> None:
        pause = 0.5
        while not stop.is_set():
            try:
                await self.backend.open()
                self.opened, self.open_error = True, None
                log.info("store_database_open", backend=self.backend.name)
                return
            except BackendUnavailable as exc:
                self.open_error = str(exc)
                self.hooks.db_error("connect", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
                pause = min(5.0, pause * 2)

    async def retention(self, stop: asyncio.Event) -> None:
        interval = self.settings.store.retention_interval_seconds
        while not stop.is_set():
            cutoff = utcnow() - timedelta(days=self.settings.store.retention_days)
            try:
                self.hooks.retention_removed(await self.backend.expire(cutoff))
            except BackendUnavailable as exc:
                self.hooks.db_error("retention", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def lag_seconds(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        consumers = subscriber_consumers(self.subscriber)
        while not stop.is_set():
            with contextlib.suppress(KafkaError, AssertionError, RuntimeError, TimeoutError):
                async with asyncio.timeout(max(interval, 5.0)):
                    self.hooks.lag(await measure_lag(consumers), self.projector.newest_ms)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def run(self, stop: asyncio.Event) -> None:
        store = self.settings.store
        app = create_app(Reader(self.backend, self.sealer), ApiKeys(self.settings.api.api_keys()), self.hooks,
                         self.not_ready)
        app.mount("/console", console_app(self.settings.console))  # the activity console (docs/console.md)
        server = uvicorn.Server(uvicorn_config(app, store.host, store.port, access_log=False))
        server_task = asyncio.create_task(server.serve(), name="store-http")
        tasks: list[asyncio.Task[None]] = []
        log.info("store_starting", host=store.host, port=store.port, backend=store.backend,
                 encrypted=self.sealer.enabled, retention_days=store.retention_days)
        try:
            await self.open_database(stop)
            if stop.is_set():
                return
            await self.broker.start()
            self.consuming = True
            tasks = [
                asyncio.create_task(self.retention(stop), name="store-retention"),
                asyncio.create_task(self.lag_seconds(stop), name="store-lag-seconds"),
                asyncio.create_task(track_lag(subscriber_consumers(self.subscriber), store.group_id),
                                    name="store-lag"),
            ]
            await stop.wait()
        finally:
            self.consuming = False
            await self.broker.stop()  # the batch in hand commits and acks first
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await server_task
            await self.backend.close()
            log.info("store_stopped", batches=self.projector.batches)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop_on_signals(stop)
    try:
        await StoreService(settings).run(stop)
    finally:
        release_signals()
