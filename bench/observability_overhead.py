"""What the observability layer costs a real stage: the ingest's consumers, instrumented and not.

    .venv/bin/python bench/observability_overhead.py                  # 3,000 webhooks x 3 statuses, 5 rounds per mode
    .venv/bin/python bench/observability_overhead.py --webhooks 1000 --rounds 1 --profile on

Each round gets topics of its own, preloaded with `--webhooks` signed-shaped webhook bodies on
`webhooks.raw` (3 statuses each, sent/delivered/read interleaved across messages, each body with the
receiver's headers), then runs the ingest's consumers exactly as `pipeline ingest` builds them
(`pipeline.ingest.service.build_consumers`: FastStream batch subscribers for the normaliser and the
deduper, the Outbox, the restorer) until every status is on `status.events`. Per round:

- status events/s = events / (first event's timestamp → last event's timestamp on `status.events`),
  so the group join and the restore before the first batch do not count;
- CPU µs per status = this process's CPU time (both consumers, the FastStream broker; the Kafka
  broker is another process) from the first event to the last, over the events written meanwhile.

The modes run in this process against one broker, interleaved round by round. Each mode's best round
is compared with `off`'s, and so is the median of the per-round ratios to the `off` round beside it
("paired"), which cancels slow drift on a shared machine.

  off     no middlewares on the broker and FastStream's logger off; the ingest's own spans go to a
          no-op tracer; logs at WARNING as in every mode (no line per record in any of them). The
          catalog metrics (delivery_status_events_total, …) are the stage's output and are counted
          in every mode.
  on      what `pipeline ingest` runs without a trace exporter: `setup()` (JSON logs, tracer provider)
          and `broker_middlewares()` — trace context through the headers, the `faststream_*`
          metrics — with spans carrying ids but not recorded.
  traced  `on` plus an in-memory span exporter: FastStream's telemetry middleware and every span
          (a CONSUMER span per webhook and per status) recorded and handed to an exporter, as with
          OTEL_EXPORTER_OTLP_ENDPOINT set (without the OTLP encoding and network cost).

`--profile on` prints the top functions of one extra round (cProfile; `--profile-mode on|traced`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from pipeline.config import Settings, load_settings  # noqa: E402
from pipeline.contracts.vocabulary import Stage  # noqa: E402
from pipeline.ingest.consumer import new_producer  # noqa: E402
from pipeline.ingest.restore import new_restore_consumer  # noqa: E402
from pipeline.ingest.service import build_consumers  # noqa: E402
from pipeline.local.kafka import LocalKafka, free_port  # noqa: E402
from pipeline.observability import Telemetry, setup  # noqa: E402
from pipeline.topics import TopicCatalog, create_topics  # noqa: E402

NUMBER = "106540352242922"
KINDS = ("sent", "delivered", "read")
LAG = 20  # delivered trails sent by 20 messages, read trails delivered by 20 more


def bodies(webhooks: int, run: str) -> list[bytes]:
    """`webhooks` bodies of 3 statuses each; every message gets sent, delivered and read, interleaved."""
    messages = webhooks  # 3 statuses per message, 3 per webhook
    statuses: list[dict[str, Any]] = []
    for step in range(messages + 2 * LAG):
        for lag, kind in zip((0, LAG, 2 * LAG), KINDS, strict=True):
            i = step - lag
            if 0 <= i < messages:
                statuses.append({
                    "id": f"wamid.{run}.{i}", "status": kind, "timestamp": str(1764000000 + step),
                    "recipient_id": "16505551234",
                    "biz_opaque_callback_data": f"req_{run}_{i}|00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
                })
    out = []
    for start in range(0, len(statuses), 3):
        value = {"messaging_product": "whatsapp",
                 "metadata": {"display_phone_number": "15550783881", "phone_number_id": NUMBER},
                 "statuses": statuses[start:start + 3]}
        entry = {"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}
        out.append(orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]}))
    return out


async def preload(settings: Settings, raw: list[bytes]) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        received_at = datetime.now(UTC).isoformat().encode()
        futures = [
            await producer.send(TopicCatalog(settings.kafka).webhooks_raw, body, headers=[
                ("x-hub-signature-256", b"sha256=" + b"0" * 64), ("received-at", received_at),
                ("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01".encode()),
                ("content-type", b"application/json"),
            ])
            for body in raw
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def events_span(settings: Settings, expected: int) -> tuple[int, float] | None:
    """(events, seconds from the first to the last event) once `expected` events are on status.events."""
    topic = TopicCatalog(settings.kafka).status_events
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        ends = await consumer.end_offsets(partitions)
        if sum(ends.values()) < expected:
            return None
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        first, last, count = float("inf"), 0.0, 0
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    first, last, count = min(first, r.timestamp), max(last, r.timestamp), count + 1
        return count, (last - first) / 1000
    finally:
        await consumer.stop()


def telemetry_for(mode: str, settings: Settings, exporter: InMemorySpanExporter) -> Telemetry:
    telemetry = setup(Stage.INGEST, settings, span_exporter=exporter if mode == "traced" else None)
    if mode == "off":  # logs as configured (WARNING: no line per record in any mode), no tracer
        return Telemetry(Stage.INGEST, trace.NoOpTracerProvider())  # type: ignore[arg-type]
    return telemetry


async def one_round(bootstrap: str, mode: str, webhooks: int, exporter: InMemorySpanExporter) -> tuple[float, float]:
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": f"b{run}.", "partitions": 3},
        ingest={"group_id": f"b{run}"},
        log={"level": "WARNING"},
    )
    await create_topics(settings.kafka)
    raw = bodies(webhooks, run)
    await preload(settings, raw)
    expected = 3 * webhooks
    telemetry = telemetry_for(mode, settings, exporter)
    producer = new_producer(settings, settings.ingest.linger_seconds)
    restore_consumer = new_restore_consumer(settings)
    await producer.start()
    await restore_consumer.start()
    watcher = AIOKafkaConsumer(**settings.kafka.client_kwargs())  # end offsets only (in every mode alike)
    await watcher.start()
    broker, handlers = build_consumers(settings, telemetry, producer, restore_consumer, observed=mode != "off")
    try:
        await broker.start()
        commits = [asyncio.create_task(h.commit_while_idle()) for h in handlers]
        deadline = time.monotonic() + 300
        # CPU is counted from the first event on: the group joins and the (empty) restores before it
        # are start-up costs, the same in every mode, that a long-running stage does not pay per status.
        while (first := await _events_written(watcher, settings)) == 0:
            await _until(deadline, mode)
        cpu_started = time.process_time()
        while (written := await _events_written(watcher, settings)) < expected:
            await _until(deadline, mode)
        cpu = (time.process_time() - cpu_started) / (written - first)
        for task in commits:
            task.cancel()
    finally:
        for handler in handlers:
            await handler.close()
        await broker.stop()
        await producer.stop()
        await restore_consumer.stop()
        await watcher.stop()
    span = await events_span(settings, expected)
    if span is None or span[0] != expected:
        raise RuntimeError(f"{mode}: expected {expected} events, got {span}")
    exporter.clear()
    return span[0] / max(span[1], 1e-3), cpu * 1e6


async def _until(deadline: float, mode: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"{mode}: the consumers did not finish")
    await asyncio.sleep(0.02)


async def _events_written(watcher: AIOKafkaConsumer, settings: Settings) -> int:
    topic = TopicCatalog(settings.kafka).status_events
    ends = await watcher.end_offsets([TopicPartition(topic, p) for p in range(settings.kafka.partitions)])
    return sum(ends.values())


async def main(args: argparse.Namespace) -> None:
    exporter = InMemorySpanExporter()
    modes = args.modes.split(",")
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as data_dir:
        kafka = LocalKafka(data_dir=Path(data_dir), port=free_port())
        kafka.start()
        try:
            kafka.wait_ready(timeout=120)
            print(f"broker {kafka.bootstrap_servers}; {args.webhooks} webhooks x 3 statuses per round, "
                  f"{args.rounds} round(s)")
            for mode in modes:  # warm-up: connections, imports, JIT-less Python's caches
                await one_round(kafka.bootstrap_servers, mode, min(args.webhooks, 300), exporter)
            for round_no in range(args.rounds):
                for mode in modes:
                    rate, cpu = await one_round(kafka.bootstrap_servers, mode, args.webhooks, exporter)
                    results[mode].append((rate, cpu))
                    print(f"  round {round_no + 1} {mode:>6}: {rate:7.0f} events/s {cpu:7.0f} CPU µs/status",
                          flush=True)
            if args.profile == "on":
                profiler = cProfile.Profile()
                profiler.enable()
                await one_round(kafka.bootstrap_servers, args.profile_mode, args.webhooks, exporter)
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                print(out.getvalue())
        finally:
            kafka.stop()

    print()
    print(f"{'mode':<8}{'best ev/s':>11}{'median':>8}{'best CPU µs/status':>20}{'median':>8}"
          f"{'throughput vs off':>19}{'CPU vs off':>12}{'paired median':>15}")
    best = {mode: (max(r for r, _ in rounds), min(c for _, c in rounds)) for mode, rounds in results.items()}
    for mode, rounds in results.items():
        rate, cpu = best[mode]
        median_rate = statistics.median(r for r, _ in rounds)
        median_cpu = statistics.median(c for _, c in rounds)
        vs = ""
        if "off" in best:
            paired = statistics.median(r / off for (r, _), (off, _) in zip(rounds, results["off"], strict=True))
            vs = f"{rate / best['off'][0]:>19.3f}{cpu / best['off'][1]:>12.3f}{paired:>15.3f}"
        print(f"{mode:<8}{rate:>11.0f}{median_rate:>8.0f}{cpu:>20.0f}{median_cpu:>8.0f}{vs}")
    if "off" in best and "on" in best:
        cpu_ratio = best["on"][1] / best["off"][1]
        ratio = best["on"][0] / best["off"][0]
        print(f"\non/off: throughput {ratio:.3f}, CPU per status {cpu_ratio:.3f} (best rounds): observability costs "
              f"{100 * (cpu_ratio - 1):.1f}% CPU (target <= 10%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webhooks", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="off,on,traced", help="comma-separated: off, on, traced")
    parser.add_argument("--profile", choices=("off", "on"), default="off")
    parser.add_argument("--profile-mode", choices=("on", "traced"), default="on", help="the mode --profile runs")
    asyncio.run(main(parser.parse_args()))
