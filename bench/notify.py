"""Callbacks per second through the notify stage, against a bare aiohttp POST loop in the same run.

    .venv/bin/python bench/notify.py                          # 20,000 callbacks, concurrency 256, 3 rounds
    .venv/bin/python bench/notify.py --callbacks 5000 --rounds 1 --concurrency 128

A receiver in another process answers every POST after 50 ms (uvloop + aiohttp). Per round, in this
process and against the same receiver:

  bare    N POSTs of a callback-sized JSON body from `concurrency` aiohttp tasks: the floor any client
          on this machine pays (no Kafka, no signing, no queues, no metrics)
  notify  the real stage (`pipeline.notify.service.Notify`) with all its observability: `setup()`
          (JSON logs, tracer provider), the Kafka middleware, the delivery metrics. N inbound messages
          (N different customers, so per-customer order does not serialise them) are written to
          `inbound.messages` by a child process once the stage owns its partitions; one `*`
          subscription points at the receiver, NOTIFY_CONCURRENCY_PER_ENDPOINT = `concurrency`.

callbacks/s = N-1 over the time from the first answered callback to the N-th (both modes), and CPU
µs/callback = this process's CPU time over the same window / N-1 (the broker, the producer and the
receiver are other processes). Target: notify ≥ 3,000 callbacks/s and CPU per callback ≤ 2x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import uvloop  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from pipeline.config import Settings, load_settings  # noqa: E402
from pipeline.contracts import InboundMessage  # noqa: E402
from pipeline.contracts.vocabulary import CallbackOutcome, DeadLetterReason, Stage  # noqa: E402
from pipeline.local.kafka import LocalKafka, free_port  # noqa: E402
from pipeline.notify.service import Notify  # noqa: E402
from pipeline.notify.telemetry import NotifyTelemetry  # noqa: E402
from pipeline.observability import setup  # noqa: E402
from pipeline.topics import TopicCatalog, create_topics  # noqa: E402

SECRET = "bench-callback-secret-0123456789"
RECEIVER = """
import asyncio, sys, uvloop
from aiohttp import web
async def hook(request):
    await request.read()
    await asyncio.sleep(0.05)
    return web.Response(status=204)
app = web.Application()
app.router.add_post("/hook", hook)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=4096)
"""


def inbound_records(count: int, run: str) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC)
    records = []
    for n in range(count):
        sender = f"1650{n:07d}"
        message = InboundMessage.model_validate({
            "wamid": f"wamid.{run}.{n}", "from": sender, "phone_number_id": "106540352242922", "timestamp": now,
            "type": "text", "text": f"order {n} — where is it?", "profile_name": "Bench User",
        })
        records.append((sender.encode(), message.model_dump_json(by_alias=True).encode()))
    return records


async def produce(bootstrap: str, topic: str, count: int, run: str) -> None:
    """Child process: write the round's records as fast as the producer batches them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in inbound_records(count, run)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class Window:
    """First and last answered callback, and this process's CPU time at each."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None
        self.done = asyncio.Event()

    def tick(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first = (time.perf_counter(), time.process_time())
        if self.count == self.expected:
            self.last = (time.perf_counter(), time.process_time())
            self.done.set()

    def figures(self) -> tuple[float, float]:
        if self.first is None or self.last is None:
            raise RuntimeError(f"only {self.count} of {self.expected} callbacks answered")
        wall, cpu = self.last[0] - self.first[0], self.last[1] - self.first[1]
        return (self.expected - 1) / wall, cpu / (self.expected - 1) * 1e6


class CountingTelemetry(NotifyTelemetry):
    """The stage's own telemetry, plus the bench's window (one counter increment per callback)."""

    def __init__(self, window: Window) -> None:
        super().__init__()
        self.window = window

    def finished(self, endpoint: str, outcome: CallbackOutcome, reason: DeadLetterReason | None) -> None:
        super().finished(endpoint, outcome, reason)
        self.window.tick()


async def bare_round(url: str, count: int, concurrency: int, body: bytes) -> tuple[float, float]:
    window = Window(count)
    remaining = count
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                    await response.read()
                window.tick()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return window.figures()


async def notify_round(
    settings: Settings, url: str, count: int, concurrency: int, bootstrap: str
) -> tuple[float, float]:
    run = uuid.uuid4().hex[:8]
    prefix = f"bench{run}."
    kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
    await create_topics(kafka)
    subscriptions = json.dumps([{"phone_number_id": "*", "url": url, "secret": SECRET}])
    notify = settings.notify.model_copy(update={
        "subscriptions": SecretStr(subscriptions), "port": 0,
        "group_id": f"bench-notify-{run}", "concurrency_per_endpoint": concurrency, "order_hold_seconds": 0.0,
    })
    round_settings = settings.model_copy(update={"kafka": kafka, "notify": notify})
    telemetry = setup(Stage.NOTIFY, round_settings)
    window = Window(count)
    stage = Notify(round_settings, telemetry)
    stage.hooks = CountingTelemetry(window)
    async with stage:
        while not (stage.ready() and (consumer := getattr(stage.subscriber, "consumer", None)) is not None
                   and consumer.assignment()):
            await asyncio.sleep(0.05)
        producer = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--produce", bootstrap, TopicCatalog(kafka).inbound_messages, str(count), run,
        )
        await asyncio.wait_for(window.done.wait(), timeout=max(120.0, count / 200))
        await producer.wait()
    return window.figures()


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    broker = LocalKafka(data_dir=workdir / "kafka", port=free_port())
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    broker.start()
    try:
        broker.wait_ready(timeout=90)
        settings = load_settings(kafka={"bootstrap_servers": broker.bootstrap_servers, "partitions": 6},
                                 log={"level": "WARNING"})
        url = f"http://127.0.0.1:{port}/hook"
        body = inbound_records(1, "body")[0][1]  # about the size of one callback's data
        for _ in range(100):
            try:
                await bare_round(url, 10, 1, body)
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        results: dict[str, list[tuple[float, float]]] = {"bare": [], "notify": []}
        for number in range(1, args.rounds + 1):
            results["bare"].append(await bare_round(url, args.callbacks, args.concurrency, body))
            results["notify"].append(await notify_round(settings, url, args.callbacks, args.concurrency,
                                                        broker.bootstrap_servers))
            bare, notify = results["bare"][-1], results["notify"][-1]
            print(f"round {number}: bare {bare[0]:,.0f}/s {bare[1]:.0f} µs CPU; "
                  f"notify {notify[0]:,.0f}/s {notify[1]:.0f} µs CPU (x{notify[1] / bare[1]:.2f})", flush=True)
        print(f"\n{args.callbacks:,} callbacks per round, concurrency {args.concurrency}, receiver answers after "
              f"50 ms, {args.rounds} round(s)")
        print(f"{'mode':<8}{'best callbacks/s':>18}{'median callbacks/s':>20}{'best CPU µs/cb':>16}")
        for mode, rounds in results.items():
            print(f"{mode:<8}{max(r[0] for r in rounds):>18,.0f}{statistics.median(r[0] for r in rounds):>20,.0f}"
                  f"{min(r[1] for r in rounds):>16.0f}")
        ratios = [n[1] / b[1] for b, n in zip(results["bare"], results["notify"], strict=True)]
        best = min(r[1] for r in results["notify"]) / min(r[1] for r in results["bare"])
        print(f"CPU per callback, notify / bare: best {best:.2f}, paired median {statistics.median(ratios):.2f} "
              f"(target ≤ 2); notify best {max(r[0] for r in results['notify']):,.0f}/s (target ≥ 3,000)")
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
        broker.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        asyncio.run(produce(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    uvloop.run(main(parser.parse_args()))
