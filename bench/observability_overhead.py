"""What the observability layer costs: one Kafka produce → consume → publish loop, instrumented and not.

    .venv/bin/python bench/observability_overhead.py                  # 10,000 messages, 5 rounds per mode
    .venv/bin/python bench/observability_overhead.py --handler http   # the relay calls an HTTP server first
    .venv/bin/python bench/observability_overhead.py --messages 5000 --rounds 1 --profile on

The loop: publish N messages to topic `in` (FastStream, no confirmation wait, then await them all); a
FastStream subscriber relays each to topic `out`; a second subscriber counts them. With
`--handler http` the relay first POSTs the body to a minimal HTTP server (another process) through
httpx on the aiohttp transport, as the sender calls the Graph API. Per round:
messages/s = N / (first publish → N-th message counted), and CPU µs/msg = this process's CPU time
(producer, relay and sink; the broker is another process) over N; the clock starts once both consumer
groups own their partitions. The modes run in this process against one broker, interleaved round by
round. Each mode's best round (least disturbed by anything else) is compared with `off`'s, and so is
the median of the per-round ratios to the `off` round beside it ("paired"), which cancels slow drift.

  off     brokers without middlewares, FastStream's logger off: no spans, no metrics, no log records
  on      what a stage runs when no trace exporter is configured: `setup()` (JSON logs, tracer
          provider) and `broker_middlewares()` on every broker — one middleware carrying the trace
          context (headers, logs, exemplars) and counting the `faststream_*` metrics; FastStream's
          logger through our handler. Spans carry ids but are not recorded (nothing would read them).
  metrics `on` without the trace context, to split `on`'s cost
  traced  `on` plus an in-memory span exporter: FastStream's telemetry middleware, every span
          recorded and handed to an exporter, httpx instrumented, as when OTEL_EXPORTER_OTLP_ENDPOINT
          is set (without the OTLP encoding and network cost)

`--profile on` prints the top functions of one extra round (cProfile; `--profile-mode on|traced`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from faststream.kafka import KafkaBroker  # noqa: E402

from pipeline.config import Settings, load_settings  # noqa: E402
from pipeline.contracts.vocabulary import Stage  # noqa: E402
from pipeline.local.kafka import LocalKafka, free_port  # noqa: E402
from pipeline.observability import broker_middlewares, instrument_http_client, setup, subscriber_consumers  # noqa: E402
from pipeline.observability.kafka import KafkaObservabilityMiddleware  # noqa: E402
from pipeline.observability.metrics import registry  # noqa: E402
from pipeline.whatsapp.transport import aiohttp_transport  # noqa: E402

PARTITIONS = 3
BODY = {"to": "+16505551234", "type": "text", "text": {"body": "hello from the benchmark"}}


async def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names])
    finally:
        await admin.close()


ECHO_SERVER = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.json_response({"messages": [{"id": "wamid.bench"}]})
app = web.Application()
app.router.add_post("/messages", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    """A minimal HTTP server in its own process (its CPU is not counted as the loop's)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port)])
    try:
        deadline = time.monotonic() + 30
        while not _accepts(port):
            if time.monotonic() > deadline:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/messages"
    finally:
        process.terminate()
        process.wait()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def make_broker(settings: Settings, mode: str, exporter: Any) -> KafkaBroker:
    if mode == "off":
        return KafkaBroker(settings.kafka.bootstrap_servers, logger=None)
    telemetry = setup(Stage.SENDER, settings, span_exporter=exporter if mode == "traced" else None)
    middlewares = broker_middlewares(telemetry.tracer_provider, "bench")
    if mode == "metrics":
        middlewares = (KafkaObservabilityMiddleware(app_name="bench", registry=registry, propagate_context=False),)
    return KafkaBroker(settings.kafka.bootstrap_servers, middlewares=middlewares)


async def one_round(
    settings: Settings, mode: str, messages: int, exporter: Any, http_url: str | None
) -> tuple[float, float]:
    """Messages per second and CPU µs per message of one full loop through fresh topics."""
    run = uuid.uuid4().hex[:8]
    source, target = f"bench.{run}.in", f"bench.{run}.out"
    await create_topics(settings.kafka.bootstrap_servers, [source, target])
    broker = make_broker(settings, mode, exporter)
    client = httpx.AsyncClient(transport=aiohttp_transport(50))
    if mode != "off":
        instrument_http_client(client)
    counted = 0
    done = asyncio.Event()

    @broker.subscriber(source, group_id=f"relay-{run}", auto_offset_reset="earliest")
    async def relay(body: dict[str, Any]) -> None:
        if http_url is not None:
            (await client.post(http_url, json=body)).raise_for_status()
        await broker.publish(body, target, key=b"106540352242922", no_confirm=True)

    @broker.subscriber(target, group_id=f"sink-{run}", auto_offset_reset="earliest")
    async def sink(body: dict[str, Any]) -> None:
        nonlocal counted
        counted += 1
        if counted == messages:
            done.set()

    await broker.start()
    try:
        # The clock starts once both groups own their partitions: a group join takes 0.1-3 s here,
        # which would otherwise be most of a round's variance.
        await _assigned(broker.subscribers)
        started, cpu_started = time.perf_counter(), time.process_time()
        pending = [
            await broker.publish(BODY, source, key=str(i % 50).encode(), no_confirm=True) for i in range(messages)
        ]
        await asyncio.gather(*pending)
        await asyncio.wait_for(done.wait(), timeout=300)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await broker.stop()
        await client.aclose()
    if exporter is not None:
        exporter.clear()
    return messages / elapsed, cpu / messages * 1e6


async def _assigned(subscribers: Sequence[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(sum(len(c.assignment()) for c in subscriber_consumers(s)()) == PARTITIONS for s in subscribers):
        if time.monotonic() > deadline:
            raise TimeoutError("the bench's consumer groups got no partitions")
        await asyncio.sleep(0.01)


async def main(args: argparse.Namespace) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    modes = args.modes.split(",")
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    with contextlib.ExitStack() as stack:
        data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-kafka-"))
        http_url = stack.enter_context(echo_server()) if args.handler == "http" else None
        kafka = LocalKafka(data_dir=Path(data_dir), port=free_port())
        kafka.start()
        try:
            kafka.wait_ready(timeout=120)
            # WARNING keeps the per-round start-up lines off the report; no line is per message at INFO
            # either, so the cost measured is the same.
            settings = load_settings(kafka={"bootstrap_servers": kafka.bootstrap_servers}, log={"level": "WARNING"})
            print(f"broker {kafka.bootstrap_servers}; handler {args.handler}; {args.messages} messages per round, "
                  f"{args.rounds} round(s)")
            for mode in modes:  # warm-up: connections, imports, JIT-less Python's caches
                await one_round(settings, mode, min(args.messages, 2000), exporter, http_url)
            for round_no in range(args.rounds):
                for mode in modes:
                    rate, cpu = await one_round(settings, mode, args.messages, exporter, http_url)
                    results[mode].append((rate, cpu))
                    print(f"  round {round_no + 1} {mode:>6}: {rate:7.0f} msg/s {cpu:7.0f} CPU µs/msg", flush=True)
            if args.profile == "on":
                profiler = cProfile.Profile()
                profiler.enable()
                await one_round(settings, args.profile_mode, args.messages, exporter, http_url)
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                print(out.getvalue())
        finally:
            kafka.stop()

    print()
    print(f"{'mode':<8}{'best msg/s':>12}{'median':>8}{'best CPU µs/msg':>17}{'median':>8}"
          f"{'throughput vs off':>19}{'CPU vs off':>12}{'paired median':>15}")
    best = {mode: (max(r for r, _ in rounds), min(c for _, c in rounds)) for mode, rounds in results.items()}
    for mode, rounds in results.items():
        rate, cpu = best[mode]
        median_rate = statistics.median(r for r, _ in rounds)
        median_cpu = statistics.median(c for _, c in rounds)
        vs = ""
        if "off" in best:
            # Rounds interleave, so each round's ratio to the `off` round beside it cancels slow drift.
            paired = statistics.median(r / off for (r, _), (off, _) in zip(rounds, results["off"], strict=True))
            vs = f"{rate / best['off'][0]:>19.3f}{cpu / best['off'][1]:>12.3f}{paired:>15.3f}"
        print(f"{mode:<8}{rate:>12.0f}{median_rate:>8.0f}{cpu:>17.0f}{median_cpu:>8.0f}{vs}")
    if "off" in best and "on" in best:
        ratio = best["on"][0] / best["off"][0]
        print(f"\non/off = {ratio:.3f} (best rounds): instrumentation costs {100 * (1 - ratio):.1f}% of throughput "
              f"(target <= 10%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="off,on,traced", help="comma-separated: off, on, traced, metrics")
    parser.add_argument("--handler", choices=("relay", "http"), default="relay")
    parser.add_argument("--profile", choices=("off", "on"), default="off")
    parser.add_argument("--profile-mode", choices=("on", "traced"), default="on", help="the mode --profile runs")
    asyncio.run(main(parser.parse_args()))
