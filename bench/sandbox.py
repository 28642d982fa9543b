"""How many sends per second the sandbox answers at 200 ms latency, and its CPU per request.

    .venv/bin/python bench/sandbox.py                 # ~40 s: baseline, sandbox, sandbox + webhooks
    .venv/bin/python bench/sandbox.py --duration 5 --in-flight 200

A raw aiohttp client keeps `--in-flight` requests open against a server in its own process, for
`--duration` seconds after a 1 s warm-up. Three servers, measured in the same run:
  baseline  a bare aiohttp app that sleeps the latency and returns a fixed answer (the floor)
  sandbox   the sandbox (validation, limits, send log, metrics), no webhooks
  webhooks  the sandbox posting sent/delivered/read webhooks to a receiver in a third process
  starlette (with --stacks) the baseline's handler on uvicorn + Starlette, the stack not chosen
The ceiling is in_flight / latency; the figures to compare across runs are the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import uvloop

from pipeline.sandbox.testing import running_sandbox

NUMBER = "106540352242922"
TICK = os.sysconf("SC_CLK_TCK")

_BASELINE = """
import asyncio, sys, uvloop
from aiohttp import web
ANSWER = b'{"messaging_product":"whatsapp","contacts":[{"input":"1","wa_id":"1"}],"messages":[{"id":"wamid.X"}]}'
async def send(request):
    await request.read()
    await asyncio.sleep(float(sys.argv[1]))
    return web.Response(body=ANSWER, content_type="application/json")
async def main():
    app = web.Application()
    app.router.add_post("/{version}/{number}/messages", send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""

# The same bare handler on uvicorn + Starlette (h11: httptools is not installed), for `--stacks`.
_STARLETTE = """
import asyncio, sys, uvicorn, uvloop
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
ANSWER = b'{"messaging_product":"whatsapp","contacts":[{"input":"1","wa_id":"1"}],"messages":[{"id":"wamid.X"}]}'
async def send(request):
    await request.body()
    await asyncio.sleep(float(sys.argv[1]))
    return Response(ANSWER, media_type="application/json")
app = Starlette(routes=[Route("/{version}/{number}/messages", send, methods=["POST"])])
async def main():
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, access_log=False, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
    await task
uvloop.run(main())
"""

_RECEIVER = """
import asyncio, uvloop
from aiohttp import web
async def hook(request):
    await request.read()
    return web.Response()
async def main():
    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


@dataclass
class Result:
    name: str
    ok: int
    errors: int
    seconds: float
    server_cpu: float
    client_cpu: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def cpu_ms(self, cpu: float) -> float:
        return 1000 * cpu / max(1, self.ok + self.errors)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


@asynccontextmanager
async def script_server(source: str, *args: str) -> AsyncIterator[tuple[int, int]]:
    """Run a small server script in its own process; yields (port, pid)."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", source, *args, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:
        port = int((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
        yield port, process.pid
    finally:
        process.terminate()
        await process.wait()


async def drive(name: str, url: str, pid: int, token: str, in_flight: int, duration: float) -> Result:
    body_template = (
        '{"messaging_product":"whatsapp","to":"1650555%04d","type":"text",'
        '"text":{"body":"Your order 42 has shipped"},"biz_opaque_callback_data":"req-%d"}'
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=in_flight)
    ok = errors = 0
    latencies: list[float] = []
    measuring = False
    counter = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        warm_until = loop.time() + 1.0
        end = warm_until + duration

        async def worker() -> None:
            nonlocal ok, errors, counter
            while loop.time() < end:
                counter += 1
                data = (body_template % (counter % 9000, counter)).encode()  # no 9xxx test numbers
                started = loop.time()
                try:
                    async with session.post(url, data=data, headers=headers) as response:
                        await response.read()
                        good = response.status == 200
                except aiohttp.ClientError:
                    good = False
                if measuring:
                    latencies.append(loop.time() - started)
                    ok += good
                    errors += not good

        workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
        await asyncio.sleep(max(0.0, warm_until - loop.time()))
        measuring = True
        server_before, client_before, started = cpu_seconds(pid), time.process_time(), loop.time()
        await asyncio.sleep(max(0.0, end - loop.time()))
        seconds = loop.time() - started
        server_cpu, client_cpu = cpu_seconds(pid) - server_before, time.process_time() - client_before
        measuring = False
        await asyncio.gather(*workers)
    return Result(name, ok, errors, seconds, server_cpu, client_cpu, latencies)


async def run(args: argparse.Namespace) -> None:
    latency = args.latency_ms / 1000
    results: list[Result] = []
    path = f"/v23.0/{NUMBER}/messages"
    sandbox_settings = {"latency_median_seconds": latency, "latency_sigma": 0.0, "rate_per_second": 0}

    async with script_server(_BASELINE, str(latency)) as (port, pid):
        results.append(await drive("baseline", f"http://127.0.0.1:{port}{path}", pid, "x", args.in_flight,
                                   args.duration))
    if args.stacks:
        async with script_server(_STARLETTE, str(latency)) as (port, pid):
            results.append(await drive("starlette", f"http://127.0.0.1:{port}{path}", pid, "x", args.in_flight,
                                       args.duration))

    async with running_sandbox(in_subprocess=True, send_log_limit=100_000, **sandbox_settings) as sandbox:
        assert sandbox.pid is not None
        result = await drive("sandbox", sandbox.base_url + path, sandbox.pid, sandbox.access_token,
                             args.in_flight, args.duration)
        results.append(result)
        stats = await sandbox.control.stats()
        accepted = stats["numbers"][NUMBER]["accepted"]
        print(f"  sandbox accepted {accepted} (warm-up included); "
              f"max in one second: {stats['numbers'][NUMBER]['max_accepted_per_second']}")

    if not args.skip_webhooks:
        async with script_server(_RECEIVER) as (hook_port, _), running_sandbox(
            in_subprocess=True, webhook_url=f"http://127.0.0.1:{hook_port}/hook", sent_after_seconds=0.05,
            delivered_after_seconds=0.15, read_after_seconds=0.3, **sandbox_settings,
        ) as sandbox:
            assert sandbox.pid is not None
            result = await drive("webhooks", sandbox.base_url + path, sandbox.pid, sandbox.access_token,
                                 args.in_flight, args.duration)
            results.append(result)
            summary = await sandbox.control.wait_webhooks_idle(within=60)
            posts = summary.get("posted", 0)
            statuses = sum(v for k, v in summary.items() if k.startswith("delivered_"))
            print(f"  webhooks: {statuses} statuses in {posts} posts "
                  f"({statuses / max(1, posts):.1f} per post), dropped {summary.get('dropped_events', 0)}")

    ceiling = args.in_flight / latency
    base = results[0]
    print(f"\nin flight {args.in_flight}, latency {args.latency_ms:g} ms, {args.duration:g} s each; "
          f"ceiling {ceiling:.0f} req/s; {os.cpu_count()} cores")
    print(f"{'server':10} {'req/s':>7} {'of ceiling':>10} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'server CPU/req':>15} {'vs baseline':>11} {'client CPU/req':>15}")
    for r in results:
        lat = sorted(r.latencies)
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
        print(f"{r.name:10} {r.rate:7.0f} {r.rate / ceiling:10.2f} {r.errors:6d} {p50:7.0f} {p99:7.0f} "
              f"{r.cpu_ms(r.server_cpu):12.3f} ms {r.cpu_ms(r.server_cpu) / base.cpu_ms(base.server_cpu):10.2f}x "
              f"{r.cpu_ms(r.client_cpu):12.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per server")
    parser.add_argument("--in-flight", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--skip-webhooks", action="store_true")
    parser.add_argument("--stacks", action="store_true",
                        help="also measure the bare handler on uvicorn + Starlette (how the stack was chosen)")
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
