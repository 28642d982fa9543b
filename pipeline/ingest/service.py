"""The ingest stage: webhook receiver and the two consumers, wired from settings.

    await serve(settings)                       # `pipeline ingest`: until SIGTERM/SIGINT
    async with Ingest(settings, telemetry) as ingest:
        ingest.port                             # the bound HTTP port (tests bind port 0)

`settings.ingest.components` picks what runs here: `all` (default: receiver and consumers in one
process, everything on `port`), `receiver`, or `consumers` (ops routes on `metrics_port`).
Consumer groups: `<group_id>-normaliser` on webhooks.raw and `<group_id>-dedupe` on status.updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Any

import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

from pipeline.config import Settings
from pipeline.contracts import DeadLetter, InboundMessage, Stage, StatusEvent
from pipeline.ingest.consumer import BatchHandler, Outbox, new_producer, subscribe
from pipeline.ingest.deduper import Deduper
from pipeline.ingest.normaliser import Normaliser
from pipeline.ingest.receiver import RawWebhookWriter, WebhookApp, app_secret_of
from pipeline.ingest.restore import Restorer, new_restore_consumer
from pipeline.ingest.state import StateRecord
from pipeline.lifecycle import release_signals, stop_on_signals
from pipeline.observability import (
    OpsServer,
    Telemetry,
    get_logger,
    new_broker,
    setup,
    subscriber_consumers,
    track_lag,
    uvicorn_config,
)
from pipeline.topics import TopicCatalog, create_topics

log = get_logger(__name__)

_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
DAY_MS = 86_400_000


class CoPartitioningError(RuntimeError):
    pass


class Ingest:
    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.tracer = telemetry.tracer("pipeline.ingest")
        self.topics = TopicCatalog(settings.kafka)
        components = settings.ingest.components
        self.runs_receiver = components in ("all", "receiver")
        self.runs_consumers = components in ("all", "consumers")
        if self.runs_receiver:
            app_secret_of(settings)  # fail at start, not on the first webhook
        self.port: int | None = None
        self.ops_port: int | None = None
        self.writer: RawWebhookWriter | None = None
        self.batches: list[BatchHandler] = []  # normaliser, deduper (once the consumers run)
        self._server: uvicorn.Server | None = None
        self._ops: OpsServer | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers_running = False

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Ingest:
        if self.runs_consumers:
            self._tasks.append(asyncio.create_task(self._run_consumers(), name="ingest-consumers"))
        if self.runs_receiver:
            await self._start_receiver()
        elif self.runs_consumers:
            self._ops = OpsServer(self.settings.ingest.host, self.settings.ingest.metrics_port, self.ready,
                                  self.readiness_details)
            await self._ops.__aenter__()
            self.ops_port = self._ops.port
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        # The receiver first (Meta's retries go to other replicas), then the consumers finish their batch.
        if self._server is not None:
            self._server.should_exit = True
        self._stop.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.writer is not None:
            await self.writer.stop()
        if self._ops is not None:
            await self._ops.__aexit__(None, None, None)
        for result in results:
            if isinstance(result, Exception):
                log.error("ingest_component_failed", error=str(result))

    async def wait(self) -> None:
        """Return when a component stops on its own (a failure: it is raised)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    def ready(self) -> bool:
        """A consumers-only process is not ready while it rebuilds a partition's state from the
        changelog; one that also receives webhooks stays ready (it can store them meanwhile)."""
        receiver_ok = not self.runs_receiver or (self.writer is not None and self.writer.ready())
        consumers_ok = not self.runs_consumers or self._consumers_running
        rebuilding = not self.runs_receiver and bool(self._restore_progress())
        return receiver_ok and consumers_ok and not rebuilding

    def readiness_details(self) -> dict[str, Any]:
        """/readyz's progress of each partition whose state is being read from `status.state`."""
        progress = self._restore_progress()
        if not progress:
            return {}
        return {"state_restore": {str(p): {"read": done, "of": total} for p, (done, total) in progress.items()}}

    def _restore_progress(self) -> dict[int, tuple[int, int]]:
        for batches in self.batches:
            if isinstance(batches.processor, Deduper):
                return batches.processor.restorer.progress
        return {}

    # --- receiver ----------------------------------------------------------------------------------

    async def _start_receiver(self) -> None:
        ingest = self.settings.ingest
        self.writer = RawWebhookWriter(self.settings, self.topics.webhooks_raw)
        await self.writer.start()
        await self.writer.wait_connected(ingest.produce_timeout_seconds)
        app = WebhookApp(self.settings, self.writer, self.tracer, ready=self.ready, details=self.readiness_details)
        sock = socket.create_server((ingest.host, ingest.port), family=_family(ingest.host), backlog=2048)
        self.port = sock.getsockname()[1]
        config = uvicorn_config(
            app, ingest.host, self.port, access_log=False,  # the verify query holds a token; metrics count requests
            timeout_graceful_shutdown=int(ingest.produce_timeout_seconds) + 1, backlog=2048,
        )
        self._server = uvicorn.Server(config)
        task = asyncio.create_task(self._server.serve(sockets=[sock]), name="ingest-http")
        self._tasks.append(task)
        while not self._server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        log.info("webhook_receiver_listening", host=ingest.host, port=self.port)

    # --- consumers ---------------------------------------------------------------------------------

    async def _run_consumers(self) -> None:
        settings = self.settings
        producer = new_producer(settings, settings.ingest.linger_seconds)
        restore_consumer = new_restore_consumer(settings)
        try:
            if not await self._until_connected(producer, restore_consumer):
                return  # stopped before Kafka ever answered
            await check_copartitioned(producer, self.topics)
            broker, self.batches = build_consumers(settings, self.telemetry, producer, restore_consumer)
            if not await self._until_started(broker):
                return
            background: list[asyncio.Task[None]] = []
            try:
                self._consumers_running = True
                log.info("ingest_consumers_started", group=settings.ingest.group_id)
                background += [asyncio.create_task(batches.commit_while_idle()) for batches in self.batches]
                background += [
                    asyncio.create_task(track_lag(subscriber_consumers(b.subscriber), b.subscriber.group_id))
                    for b in self.batches
                ]
                await self._stop.wait()
            finally:
                self._consumers_running = False
                for batches in self.batches:
                    await batches.close()
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                await broker.stop()  # leaves the groups
        finally:
            await producer.stop()
            await restore_consumer.stop()

    async def _until_started(self, broker: KafkaBroker) -> bool:
        """Start the broker's subscribers, retrying while Kafka does not answer; False if stopped first."""
        attempt = 0
        while not self._stop.is_set():
            try:
                await broker.start()
                return True
            except (KafkaError, OSError) as exc:
                await broker.stop()
                delay = _RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)]
                log.warning("kafka_unreachable", retry_in_s=delay, error=str(exc))
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        return False

    async def _until_connected(self, producer: AIOKafkaProducer, restore_consumer: AIOKafkaConsumer) -> bool:
        """Create missing topics and connect, retrying until Kafka answers; False if stopped first."""
        attempt = 0
        pending = [producer, restore_consumer]
        while not self._stop.is_set():
            try:
                with contextlib.suppress(KafkaError):  # no permission to create: they must exist
                    await create_topics(self.settings.kafka)
                while pending:
                    await pending[0].start()
                    pending.pop(0)
                return True
            except (KafkaError, OSError) as exc:
                delay = _RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)]
                log.warning("kafka_unreachable", retry_in_s=delay, error=str(exc))
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        return False


def build_consumers(
    settings: Settings, telemetry: Telemetry, producer: AIOKafkaProducer, restore_consumer: AIOKafkaConsumer,
    *, observed: bool = True,
) -> tuple[KafkaBroker, list[BatchHandler]]:
    """The broker with the normaliser's and the deduper's batch subscribers (not started).

    `observed=False` only for bench/observability_overhead.py: the broker without its middlewares.
    """
    group, ingest = settings.ingest.group_id, settings.ingest
    topics = TopicCatalog(settings.kafka)
    tracer = telemetry.tracer("pipeline.ingest")
    normaliser = BatchHandler(
        Normaliser(Outbox(producer), topics, tracer, f"{group}-normaliser"), ingest.commit_interval_seconds
    )

    async def committed(tp: TopicPartition) -> int | None:
        return await deduper.committed(tp)

    deduper = BatchHandler(
        Deduper(
            Outbox(producer), topics, tracer, f"{group}-dedupe",
            Restorer(restore_consumer, topics, tail_window=4 * ingest.batch_max_records,
                     state_dir=ingest.state_dir, cache_bytes=ingest.state_cache_mb * 1024 * 1024),
            committed=committed,
            retention_ms=int(ingest.state_retention_days * DAY_MS),
        ),
        ingest.commit_interval_seconds,
    )
    # A stop waits this long for the batch in hand (a batch is at most a few seconds of work).
    broker = new_broker(settings.kafka, telemetry.tracer_provider, "ingest", observed=observed, graceful_timeout=10.0)
    declare(broker, settings, normaliser, deduper)
    return broker, [normaliser, deduper]


def declare(broker: KafkaBroker, settings: Settings, normaliser: BatchHandler, deduper: BatchHandler) -> None:
    """What the ingest's broker consumes (its two subscribers) and writes (declared for the AsyncAPI
    document; the Outbox writes the records, see `consumer`)."""
    topics, group = TopicCatalog(settings.kafka), settings.ingest.group_id
    subscribe(broker, normaliser, topics.webhooks_raw, f"{group}-normaliser", settings,
              description="Signed webhook bodies → status.updates, inbound.messages, dead-letters")
    subscribe(broker, deduper, topics.status_updates, f"{group}-dedupe", settings,
              description="Status updates → deduplicated status.events and the status.state changelog")
    outputs: tuple[tuple[str, type[Any], str], ...] = (
        (topics.status_updates, StatusEvent, "one per status of a webhook, duplicates included (normaliser)"),
        (topics.inbound_messages, InboundMessage, "one per user message of a webhook (normaliser)"),
        (topics.dead_letters, DeadLetter, "records the ingest could not use, with the reason (both)"),
        (topics.status_events, StatusEvent, "deduplicated, forward-only status events (deduper)"),
        (topics.status_state, StateRecord, "each message's dedupe state, compacted; tombstones expire it (deduper)"),
    )
    for topic, schema, description in outputs:
        broker.publisher(topic, schema=schema, title=topic, description=description)


async def check_copartitioned(producer: AIOKafkaProducer, topics: TopicCatalog) -> None:
    """The dedupe state of a wamid must live in the partition number its updates arrive on."""
    names = (topics.status_updates, topics.status_state, topics.status_events)
    counts = {name: len(await producer.partitions_for(name)) for name in names}
    if len(set(counts.values())) != 1:
        raise CoPartitioningError(
            "status.updates, status.state and status.events must have the same partition count "
            f"(they are co-partitioned by wamid); got {counts}"
        )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop`); a failing component ends the process with its error."""
    telemetry = setup(Stage.INGEST, settings)
    stop = stop_on_signals(stop)
    try:
        async with Ingest(settings, telemetry) as ingest:
            log.info("ingest_started", components=settings.ingest.components, port=ingest.port,
                     ops_port=ingest.ops_port)
            stopped = asyncio.create_task(stop.wait())
            failed = asyncio.create_task(ingest.wait())
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if failed.done():
                failed.result()  # raises the component's error
            failed.cancel()
    finally:
        release_signals()
        log.info("ingest_stopped")
