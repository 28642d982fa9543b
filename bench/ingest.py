"""Status ingest under load: signed webhook POSTs at increasing rates against a real broker.

    .venv/bin/python bench/ingest.py                              # 1,000 → 4,000 statuses/s, 1 and 3 per POST
    .venv/bin/python bench/ingest.py --rates 3000 --per-post 3 --seconds 20
    .venv/bin/python bench/ingest.py --components split           # receiver and consumers in two processes

Starts its own Kafka broker (KRaft, free ports) and the ingest as `pipeline ingest` in its own process
(`--components all`, the default deployment: receiver and consumers share one process). A load
generator in this process posts signed Meta-shaped webhooks open-loop at each rate for `--seconds`:
every message gets sent, delivered and read, interleaved across messages the way a busy number sees
them (`--per-post` statuses per POST; Meta batches under load). Per level it reports:

- POSTs/s answered and the response time p50/p99/max (the receiver answers 200 only once the raw
  body is acknowledged by Kafka with acks=all);
- status events/s out of the normaliser and deduper: the events of the level over the time from
  the first to the last of them on `status.events` (their Kafka timestamps), the sustained rate
  while load is offered; a stage that falls behind shows up as a later last event, and as drain s
  (load end → every status on `status.events`);
- the ingest processes' CPU (user+system) per POST and per status.

Baseline, measured in the same run at the same rates: a bare receiver (raw ASGI on uvicorn with
httptools and uvloop, producing the body to Kafka with acks=all; no signature check, spans, metrics or
consumers) — the floor of "HTTP in, durable in Kafka, answer" on this machine. Ratios are against it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

APP_SECRET = "sandbox-app-secret"
NUMBER = "106540352242922"
KINDS = ("sent", "delivered", "read")
LAG = 50  # delivered trails sent by 50 messages, read trails delivered by 50 more


# --- the baseline server (run as `bench/ingest.py --serve-baseline PORT BOOTSTRAP TOPIC`) ------------


def serve_baseline(port: int, bootstrap: str, topic: str) -> None:
    import uvicorn
    import uvloop
    from aiokafka import AIOKafkaProducer

    producer: Any = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal producer
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
                    await producer.start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await producer.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/readyz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        await (await producer.send(topic, b"".join(chunks)))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", http="httptools", lifespan="on",
                            access_log=False, log_level="warning", backlog=2048)
    uvloop.run(uvicorn.Server(config).serve())


# --- processes ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    url: str
    processes: list[subprocess.Popen[bytes]]
    events_topic: str | None  # None: the baseline has no consumers

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def start_ingest(settings: Any, components: str, log_dir: Path) -> Server:
    from pipeline.local.stack import settings_env

    env = {**os.environ, **settings_env(settings), "LOG_LEVEL": "WARNING", "OTEL_TRACES_EXPORTER": "none"}
    roles = ["all"] if components == "all" else ["receiver", "consumers"]
    processes = []
    for role in roles:
        out = (log_dir / f"ingest-{role}.log").open("ab")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "pipeline", "ingest"], env={**env, "INGEST_COMPONENTS": role},
            cwd=log_dir, stdout=out, stderr=subprocess.STDOUT,
        ))
    url = f"http://127.0.0.1:{settings.ingest.port}"
    return Server(f"ingest ({components})", url, processes, f"{settings.kafka.topic_prefix}status.events")


def start_baseline(port: int, bootstrap: str, topic: str, log_dir: Path) -> Server:
    out = (log_dir / "baseline.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(port), bootstrap, topic],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
    )
    return Server("baseline (bare receiver)", f"http://127.0.0.1:{port}", [process], None)


async def wait_ready(server: Server, timeout: float = 60.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            for process in server.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{server.name} exited with {process.returncode}")
            try:
                async with http.get(f"{server.url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready within {timeout}s")


# --- load --------------------------------------------------------------------------------------------


def bodies(level: str, statuses: int, per_post: int) -> list[bytes]:
    """Signed-ready webhook bodies: each message's sent, delivered, read, interleaved across messages."""
    import orjson

    messages = statuses // len(KINDS)
    items: list[dict[str, Any]] = []
    for step in range(messages + 2 * LAG):
        for lag, kind in zip((0, LAG, 2 * LAG), KINDS, strict=True):
            index = step - lag
            if 0 <= index < messages:
                items.append({
                    "id": f"wamid.bench.{level}.{index}", "status": kind, "timestamp": str(1764000000 + step),
                    "recipient_id": "16505551234", "biz_opaque_callback_data": f"req_bench_{index}",
                    "pricing": {"billable": True, "pricing_model": "PMP", "category": "utility"},
                })
    posts = []
    for start in range(0, len(items), per_post):
        value = {"messaging_product": "whatsapp",
                 "metadata": {"display_phone_number": "15550783881", "phone_number_id": NUMBER},
                 "statuses": items[start : start + per_post]}
        posts.append(orjson.dumps({"object": "whatsapp_business_account",
                                   "entry": [{"id": "102290129340398", "changes": [{"field": "messages",
                                                                                     "value": value}]}]}))
    return posts


@dataclass
class Result:
    server: str
    per_post: int
    offered: float  # statuses/s
    posts_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    events_per_s: float | None = None
    drain_s: float | None = None  # load end → last event seen
    events_completed: int = 0
    cpu_ms_per_post: float = 0.0
    cpu_ms_per_status: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)


async def post_at_rate(url: str, posts: list[bytes], rate: float) -> tuple[list[float], int, float]:
    """Open loop: POST i starts at i / rate seconds, whatever the answers so far."""
    import aiohttp

    from pipeline.ingest.signature import sign

    signed = [(body, sign(APP_SECRET.encode(), body)) for body in posts]
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def one(body: bytes, signature: str) -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                async with http.post(url, data=body, headers={"X-Hub-Signature-256": signature,
                                                              "Content-Type": "application/json"}) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - started)

        tasks: set[asyncio.Task[None]] = set()
        begin = time.perf_counter()
        sent = 0
        while sent < len(signed):
            due = min(len(signed), int((time.perf_counter() - begin) * rate) + 1)
            while sent < due:
                task = asyncio.create_task(one(*signed[sent]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - begin
    return latencies, errors, elapsed


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def event_span(bootstrap: str, topic: str, before: dict[int, int], after: dict[int, int]) -> float:
    """Seconds from the first to the last event written between `before` and `after` (their Kafka
    timestamps, set by the deduper's producer when it writes them)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        firsts, lasts = [], []
        for partition, end in after.items():
            start = before.get(partition, 0)
            if end <= start:
                continue
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            for offset, into in ((start, firsts), (end - 1, lasts)):
                consumer.seek(tp, offset)
                record = await consumer.getone()
                into.append(record.timestamp / 1000)
        return max(lasts) - min(firsts) if firsts else 0.0
    finally:
        await consumer.stop()


async def measure(server: Server, bootstrap: str, partitions: int, level: str, rate: float, per_post: int,
                  seconds: float) -> Result:
    statuses = int(rate * seconds) // len(KINDS) * len(KINDS)
    posts = bodies(level, statuses, per_post)
    topic = server.events_topic
    before = await end_offsets(bootstrap, topic, partitions) if topic else {}
    cpu0 = server.cpu()
    latencies, errors, elapsed = await post_at_rate(f"{server.url}/webhooks/whatsapp", posts, rate / per_post)
    result = Result(server.name, per_post, rate, posts_per_s=len(posts) / elapsed, errors=errors)
    if topic:
        load_ended = time.perf_counter()
        deadline = load_ended + 120
        while True:
            after = await end_offsets(bootstrap, topic, partitions)
            written = sum(after.values()) - sum(before.values())
            if written >= statuses or time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.05)
        result.drain_s = time.perf_counter() - load_ended
        # The rate out while the stream flows: events over first → last event's timestamp. Dividing
        # by "first POST → last event seen by this poller" (what this bench did before) adds the
        # pipeline's latency and the poll interval to every level and reads below the offered rate
        # even when the ingest keeps up; a stage that falls behind still shows, as a later last event.
        span = await event_span(bootstrap, topic, before, after)
        result.events_per_s = (written - 1) / span if span > 0 else None
        result.events_completed = written
    cpu = server.cpu() - cpu0
    latencies.sort()
    result.p50_ms = statistics.median(latencies) * 1000
    result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    result.max_ms = latencies[-1] * 1000
    result.cpu_ms_per_post = cpu / len(posts) * 1000
    result.cpu_ms_per_status = cpu / statuses * 1000
    return result


# --- main ------------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    base = {(r.per_post, r.offered): r for r in results if r.events_per_s is None}
    lines = [
        "| server | statuses/POST | offered statuses/s | POSTs/s | p50 ms | p99 ms | max ms | errors "
        "| status events/s | drain s | CPU ms/POST | CPU ms/status | p99 vs base | CPU vs base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = base.get((r.per_post, r.offered))
        p99_ratio = f"{r.p99_ms / b.p99_ms:.2f}x" if b else ""
        cpu_ratio = f"{r.cpu_ms_per_post / b.cpu_ms_per_post:.2f}x" if b else ""
        events = f"{r.events_per_s:,.0f}" if r.events_per_s is not None else "—"
        drain = f"{r.drain_s:.1f}" if r.drain_s is not None else "—"
        lines.append(
            f"| {r.server} | {r.per_post} | {r.offered:,.0f} | {r.posts_per_s:,.0f} | {r.p50_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.max_ms:.0f} | {r.errors} | {events} | {drain} | {r.cpu_ms_per_post:.3f} | "
            f"{r.cpu_ms_per_status:.3f} | {p99_ratio} | {cpu_ratio} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    from pipeline.config import load_settings
    from pipeline.local.kafka import LocalKafka, free_port
    from pipeline.topics import create_topics

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    broker = LocalKafka(data_dir=work / "kafka", port=free_port(), heap="1g")
    broker.start()
    broker.wait_ready(timeout=90)
    results: list[Result] = []
    try:
        settings = load_settings(
            kafka={"bootstrap_servers": broker.bootstrap_servers, "topic_prefix": "bench.", "partitions": 3},
            whatsapp={"app_secret": APP_SECRET, "webhook_token": "bench", "phone_number_id": NUMBER},
            ingest={"port": free_port(), "metrics_port": free_port(), "group_id": "bench-ingest"},
        )
        await create_topics(settings.kafka)
        # The baseline writes elsewhere: the ingest's normaliser must not find its bodies afterwards.
        baseline_kafka = settings.kafka.model_copy(update={"topic_prefix": "baseline."})
        await create_topics(baseline_kafka)
        bootstrap = broker.bootstrap_servers
        servers = [
            ("baseline", lambda: start_baseline(free_port(), bootstrap, "baseline.webhooks.raw", work)),
            ("ingest", lambda: start_ingest(settings, args.components, work)),
        ]
        for name, start in servers:
            if name == "baseline" and args.no_baseline:
                continue
            server = start()
            try:
                await wait_ready(server)
                # Warm-up: connections, JIT-less but cached imports, consumer assignment and restore.
                await measure(server, bootstrap, 3, f"{name}-warm", 300.0, 3, 2.0)
                for per_post in args.per_post:
                    for rate in args.rates:
                        level = f"{name}-{per_post}-{int(rate)}"
                        result = await measure(server, bootstrap, 3, level, rate, per_post, args.seconds)
                        results.append(result)
                        print(table([result]).splitlines()[-1], flush=True)
            finally:
                server.stop()
    finally:
        broker.stop()
    print()
    print(table(results))
    print(f"\nlogs: {work}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-baseline":
        serve_baseline(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[1000, 2000, 3000, 4000],
                        help="offered status updates per second (comma-separated levels)")
    parser.add_argument("--per-post", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3],
                        help="statuses per webhook POST (comma-separated)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per level")
    parser.add_argument("--components", choices=["all", "split"], default="all")
    parser.add_argument("--no-baseline", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
