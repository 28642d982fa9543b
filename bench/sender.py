"""Sender throughput, pacing, CPU and latency against the sandbox, with a naive sequential consumer as baseline.

    .venv/bin/python bench/sender.py [--messages 20000] [--rate 1000] [--latency-ms 200] [--nice] [--profile FILE]

Starts its own Kafka broker and the sandbox (its own process: cap `--rate`/s per number, lognormal
latency around `--latency-ms`), then, each in its own process so that /proc gives its CPU alone:

1. **naive**: what a user writes first — aiokafka consumer, for each record: parse, POST with httpx,
   publish the result (send_and_wait), commit. For `--baseline-seconds`.
2. **throughput**: `--messages` requests for one business number preloaded, then `pipeline sender`
   (rate `--rate`/s, all observability on: JSON log line per outcome, spans, metrics) drains them.
   Sustained sent/s = the middle 80 % of the sandbox's accepted sends over the time they took.
3. **latency**: an open-loop producer at 90 % of the rate for `--latency-seconds`; accept→sent is
   `SendResult.completed_at - accepted_at` (set by the producer at publish time).

Prints sustained sent/s, the sandbox's maximum count in any one-second window (and 130429s), sender
CPU µs per message, p50/p99 accept→sent, and the ratio to the naive consumer. `BENCH_DUMP=file.json`
keeps the sandbox's send log of the throughput phase (for per-interval rates).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from pipeline.config import load_settings  # noqa: E402
from pipeline.contracts import SendRequest, SendResult, utcnow  # noqa: E402
from pipeline.local.kafka import LocalKafka, free_port  # noqa: E402
from pipeline.sandbox.testing import running_sandbox  # noqa: E402
from pipeline.topics import TopicCatalog, create_topics  # noqa: E402

NUMBER = "106540352242922"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_RATE = 950.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / CLK_TCK, sum(fields) / CLK_TCK


def max_window(times: list[float], width: float = 1.0) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def request(n: int, tag: str) -> SendRequest:
    # 5,000 distinct recipients: per-recipient order never limits a run of this size.
    return SendRequest(request_id=f"{tag}-{n:06d}", phone_number_id=NUMBER, to=f"+1650{5_000_000 + n % 5000:07d}",
                       message={"type": "text", "text": {"body": f"Your code is {n:06d}"}}, accepted_at=utcnow())


async def preload(bootstrap: str, topic: str, count: int, tag: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(topic, request(n, tag).model_dump_json(exclude_none=True).encode(),
                                       key=NUMBER.encode(), headers=_headers()) for n in range(count)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _headers() -> list[tuple[str, bytes]]:
    return [("traceparent", f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01".encode()),
            ("content-type", b"application/json")]


# --- the naive consumer (its own process) -----------------------------------------------------------


async def naive(bootstrap: str, prefix: str, base_url: str, seconds: float) -> None:
    """One record at a time: parse, POST, publish the result, commit. The code a user writes first."""
    import httpx

    from pipeline.whatsapp import message_payload

    catalog = TopicCatalog(load_settings(kafka={"topic_prefix": prefix}).kafka)
    consumer = AIOKafkaConsumer(catalog.send_requests, bootstrap_servers=bootstrap, group_id="naive",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await consumer.start()
    await producer.start()
    sent = 0
    async with httpx.AsyncClient(base_url=f"{base_url}/v23.0/", timeout=15,
                                 headers={"authorization": "Bearer sandbox-token"}) as http:
        started = None
        deadline = None
        async for record in consumer:
            if started is None:
                started = time.monotonic()
                deadline = started + seconds
            req = SendRequest.model_validate_json(record.value)
            response = await http.post(f"{req.phone_number_id}/messages", json=message_payload(req, req.request_id))
            body = response.json()
            result = SendResult(request_id=req.request_id, phone_number_id=NUMBER, to=req.to, outcome="sent",
                                wamid=body["messages"][0]["id"], attempts=1, accepted_at=req.accepted_at)
            await producer.send_and_wait(catalog.send_results, result.model_dump_json().encode(), key=record.key)
            await consumer.commit()
            sent += 1
            assert deadline is not None
            if time.monotonic() >= deadline:
                break
    elapsed = time.monotonic() - (started or time.monotonic())
    await consumer.stop()
    await producer.stop()
    print(orjson.dumps({"sent": sent, "seconds": elapsed}).decode(), flush=True)


# --- the real sender ----------------------------------------------------------------------------------


async def start_sender(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "pipeline", "sender", env=env,
                                                stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT)


async def wait_ready(port: int, process: asyncio.subprocess.Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError("the sender exited during start-up")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise TimeoutError("sender not ready")


async def count_results(bootstrap: str, topic: str, want: int, tag: str, timeout: float) -> list[SendResult]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    await consumer.start()
    results: list[SendResult] = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for record in records:
                    result = SendResult.model_validate_json(record.value)
                    if result.request_id.startswith(tag):
                        results.append(result)
    finally:
        await consumer.stop()
    return results


async def open_loop(bootstrap: str, topic: str, rate: float, seconds: float, tag: str) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=2)
    await producer.start()
    n, start = 0, time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while n < due:
                await producer.send(topic, request(n, tag).model_dump_json(exclude_none=True).encode(),
                                    key=NUMBER.encode(), headers=_headers())
                n += 1
            await asyncio.sleep(0.005)
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def run(args: argparse.Namespace) -> None:
    latency = args.latency_ms / 1000  # the sandbox's latency_median_seconds
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, -10)  # inherited by the broker, sandbox and sender processes
    data = Path(tempfile.mkdtemp(prefix="bench-sender-"))
    broker = LocalKafka(data_dir=data / "kafka", port=free_port())
    broker.start()
    try:
        broker.wait_ready(timeout=120)
        bootstrap = broker.bootstrap_servers
        prefix_naive, prefix = "naive.", "bench."
        for p in (prefix_naive, prefix):
            await create_topics(load_settings(kafka={"bootstrap_servers": bootstrap, "topic_prefix": p,
                                                     "partitions": 3}).kafka)
        catalog = TopicCatalog(load_settings(kafka={"topic_prefix": prefix}).kafka)
        async with running_sandbox(in_subprocess=True, rate_per_second=args.rate, latency_median_seconds=latency,
                                   send_log_limit=max(100_000, args.messages * 2)) as sandbox:
            # 1. naive baseline
            naive_topic = TopicCatalog(load_settings(kafka={"topic_prefix": prefix_naive}).kafka).send_requests
            await preload(bootstrap, naive_topic, int(args.baseline_seconds * 20) + 100, "naive")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--naive-worker", bootstrap, prefix_naive, sandbox.base_url,
                str(args.baseline_seconds), stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            naive_result = orjson.loads(out.strip().splitlines()[-1])
            naive_rate = naive_result["sent"] / naive_result["seconds"]
            print(f"naive sequential consumer: {naive_result['sent']} sent in {naive_result['seconds']:.1f} s "
                  f"= {naive_rate:.1f}/s", flush=True)
            await sandbox.control.reset()
            await sandbox.control.configure(rate_per_second=args.rate, latency_median_seconds=latency,
                                            send_log_limit=max(100_000, args.messages * 2))

            # 2. throughput
            await preload(bootstrap, catalog.send_requests, args.messages, "tp")
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WHATSAPP_", "SENDER_"))}
            env.update({
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC_PREFIX": prefix, "KAFKA_PARTITIONS": "3",
                "WHATSAPP_API_BASE_URL": sandbox.base_url, "WHATSAPP_ACCESS_TOKEN": "sandbox-token",
                "WHATSAPP_PHONE_NUMBER_ID": NUMBER, "SENDER_PORT": str(port), "SENDER_GROUP_ID": "bench-sender",
                "SENDER_RATE_PER_SECOND": str(args.rate), "SENDER_MAX_IN_FLIGHT": str(args.max_in_flight),
                "LOG_LEVEL": "INFO",
                **dict(kv.split("=", 1) for kv in args.env),
            })
            log = data / "sender.log"
            sender = await start_sender(env, log)
            try:
                await wait_ready(port, sender)
                profiler = None
                if args.profile:
                    profiler = await asyncio.create_subprocess_exec(
                        str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(sender.pid), "-r", "250",
                        "-f", "raw", "-o", args.profile, "--nonblocking", "-d", str(int(args.messages / args.rate)),
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                others = {"sandbox": sandbox.pid, "broker": broker.pid(), "bench": os.getpid()}
                cpu0, t0 = cpu_seconds(sender.pid), time.monotonic()
                others0 = {name: cpu_seconds(pid) for name, pid in others.items() if pid}
                busy0, total0 = machine_busy()
                results = await count_results(bootstrap, catalog.send_results, args.messages, "tp", timeout=600)
                cpu1, t1 = cpu_seconds(sender.pid), time.monotonic()
                others1 = {name: cpu_seconds(pid) for name, pid in others.items() if pid}
                busy1, total1 = machine_busy()
                if profiler is not None:
                    await profiler.wait()
                    print(f"py-spy profile (collapsed stacks) of the sender: {args.profile}")
                stats = await sandbox.control.stats()
                sends = await sandbox.control.sends(phone_number_id=NUMBER)
                if os.environ.get("BENCH_DUMP"):
                    Path(os.environ["BENCH_DUMP"]).write_bytes(orjson.dumps(sends))
                times = sorted(s["at"] for s in sends)
                wall_max = max_window(times)
                lo, hi = int(len(times) * 0.1), int(len(times) * 0.9) - 1
                sustained = (hi - lo) / (times[hi] - times[lo])
                number = stats["numbers"][NUMBER]
                throttled = stats["received"]["messages"].get("throttled", 0)
                cpu_us = (cpu1 - cpu0) / len(results) * 1e6
                print(f"(the same log by each send's wall-clock accept time: max {wall_max} in any 1 s)", flush=True)
                print(f"sender: {len(results)} results in {t1 - t0:.1f} s; sustained {sustained:.0f} sent/s; "
                      f"sandbox max in any 1 s window: {number['max_requests_per_second']} requests, "
                      f"{number['max_accepted_per_second']} accepted (cap {args.rate:g}); 130429 answers: "
                      f"{throttled}; sender CPU {cpu_us:.0f} µs/message", flush=True)
                shares = ", ".join(f"{name} {(others1[name] - others0[name]) / (t1 - t0):.2f}"
                                   for name in others1)
                print(f"cores used during the run: sender {(cpu1 - cpu0) / (t1 - t0):.2f}, {shares}; machine "
                      f"{(busy1 - busy0) / (t1 - t0):.2f} of {(total1 - total0) / (t1 - t0):.2f}", flush=True)

                # 3. latency, open loop at 90 % of the rate
                await sandbox.control.reset()
                await sandbox.control.configure(rate_per_second=args.rate, latency_median_seconds=latency)
                produced = await open_loop(bootstrap, catalog.send_requests, args.rate * 0.9, args.latency_seconds,
                                           "lat")
                lat_results = await count_results(bootstrap, catalog.send_results, produced, "lat", timeout=120)
                latencies = [(r.completed_at - r.accepted_at).total_seconds() * 1000 for r in lat_results
                             if r.accepted_at is not None]
                lat_stats = (await sandbox.control.stats())["numbers"][NUMBER]
                print(f"latency at {args.rate * 0.9:.0f}/s open loop: {len(lat_results)} results; accept→sent "
                      f"p50 {percentile(latencies, 0.5):.0f} ms, p99 {percentile(latencies, 0.99):.0f} ms; "
                      f"sandbox max window {lat_stats['max_requests_per_second']}", flush=True)
            finally:
                sender.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(sender.wait(), timeout=60)
            print()
            print("| figure | value | target |")
            print("|---|---|---|")
            print(f"| sustained sent/s, one number | {sustained:.0f} | ≥ {TARGET_RATE:.0f} |")
            print(f"| sandbox max requests in any 1 s window | {number['max_requests_per_second']} | "
                  f"≤ {args.rate:g} |")
            print(f"| 130429 answers | {throttled} | 0 |")
            print(f"| sender CPU per message | {cpu_us:.0f} µs | |")
            print(f"| accept→sent p50 / p99 at {args.rate * 0.9:.0f}/s | {percentile(latencies, 0.5):.0f} / "
                  f"{percentile(latencies, 0.99):.0f} ms | |")
            print(f"| naive sequential consumer | {naive_rate:.1f}/s | baseline |")
            print(f"| ratio sender / naive | {sustained / naive_rate:.0f}x | |")
            print(f"| sender exit code after SIGTERM | {code} | 0 |")
            if args.keep_log:
                print(f"sender log: {log}")
    finally:
        broker.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-worker":
        bootstrap, prefix, base_url, seconds = sys.argv[2:6]
        asyncio.run(naive(bootstrap, prefix, base_url, float(seconds)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--max-in-flight", type=int, default=300)
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--env", action="append", default=[], help="extra VAR=value for the sender process")
    parser.add_argument("--keep-log", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the sender during the throughput phase")
    parser.add_argument("--nice", action="store_true",
                        help="run everything at nice -10 (root): less noise from other work on the machine")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
