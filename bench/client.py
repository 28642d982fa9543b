"""Graph API client throughput and CPU cost, against raw aiohttp measured in the same run.

    .venv/bin/python bench/client.py                       # sandbox at 200 ms, C = 50/200/300/400
    .venv/bin/python bench/client.py --levels 300 --modes aiohttp,client,client-untraced   # the target
    .venv/bin/python bench/client.py --server echo         # a minimal aiohttp stand-in instead
    .venv/bin/python bench/client.py --levels 300 --seconds 10 --modes aiohttp,client

The server runs in its own process so that the CPU figures are the client's alone. Each (mode,
level) runs in a fresh client process for the same reason, and so that one mode's imports and
instrumentation cannot change another's cost. "CPU us/req" is that process's CPU time (user + system,
all threads) during the measured window, divided by the requests completed in it.

The request list and everything imported before the clock starts are frozen out of the garbage
collector (`gc.freeze()`), so that no mode's figure carries a full collection of the bench's own data.

Runs are interleaved (every mode once per round, order rotated) and the medians reported, because
the machine is shared: a burst of someone else's load then spoils one round of every mode alike.

Every tenth request is addressed by BSUID (`recipient_user_id`, Meta's `recipient`) rather than by
phone number, as producers may; the baseline builds the same bodies.

Modes:
  aiohttp         raw aiohttp ClientSession posting the same JSON (the baseline)
  client          WhatsAppClient as deployed: its HTTP/1.1 transport (pipeline/whatsapp/transport.py),
                  an OpenTelemetry span per call, recorded and exported (to an exporter that drops it)
  client-untraced the same without spans (the HTTP stack's cost alone)
  httpx-aiohttp   WhatsAppClient on httpx-aiohttp's AiohttpTransport (the library transport)
  httpx-default   WhatsAppClient on httpx's own transport
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "sandbox-token"
PHONE_NUMBER_ID = "106540352242922"
MODES = ("aiohttp", "client", "client-untraced", "httpx-aiohttp", "httpx-default")
TARGET_RATIO = 1.3  # client CPU per call against raw aiohttp's, spans on and off (issue 20)


# --- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_echo(port: int, latency_ms: float) -> None:
    """A minimal Graph API stand-in: checks the token, waits `latency_ms`, answers Meta's success body."""
    import uuid

    import orjson
    import uvloop
    from aiohttp import web

    async def messages(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": {"code": 190, "message": "Invalid OAuth access token"}}, status=401)
        body = orjson.loads(await request.read())
        await asyncio.sleep(latency_ms / 1000)
        contact = {"input": body["to"], "wa_id": body["to"]} if "to" in body else {
            "input": body["recipient"], "user_id": body["recipient"]}  # addressed by BSUID
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [{"id": f"wamid.{uuid.uuid4().hex}"}],
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/{version}/{phone_number_id}/messages", messages)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_server(kind: str, latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind == "echo":
        cmd = [sys.executable, __file__, "--serve-echo", str(port), "--latency-ms", str(latency_ms)]
        env = dict(os.environ)
    else:
        cmd = [sys.executable, "-m", "pipeline", "sandbox", "--port", str(port)]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}, **sandbox_env(latency_ms)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, base_url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{kind} server did not listen on {port} within 30 s")


def sandbox_env(latency_ms: float) -> dict[str, str]:
    """Sandbox settings for a benchmark: fixed latency, no throughput or pair limits, no webhooks."""
    return {
        "SANDBOX_LATENCY_MEDIAN_SECONDS": str(latency_ms / 1000),
        "SANDBOX_LATENCY_SIGMA": "0",
        "SANDBOX_RATE_PER_SECOND": "0",
        "SANDBOX_PAIR_INTERVAL_SECONDS": "0",
        "SANDBOX_WEBHOOK_URL": "",
        "SANDBOX_SEND_LOG_LIMIT": "0",
        "LOG_LEVEL": "WARNING",
    }


# --- one measured run (in its own process) --------------------------------------------------------


def send_requests(count: int) -> list[Any]:
    """Text messages to distinct ordinary recipients (no test-scenario suffix 9xxx, so no scenario and
    no pair limit applies); every tenth addressed by BSUID instead of phone number."""
    from pipeline.contracts import SendRequest

    requests = []
    for i in range(count):
        if f"{i:07d}"[-4] == "9":
            continue
        message = {"type": "text", "text": {"body": f"bench {i}"}}
        if i % 10 == 3:
            requests.append(SendRequest(recipient_user_id=f"GB.{i:020d}", message=message))
        else:
            requests.append(SendRequest(to=f"+4420{i:07d}", message=message))
    return requests


async def measure(mode: str, base_url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    from pipeline.config import load_settings

    requests = send_requests(50_000)
    send = await make_sender(mode, base_url, concurrency, load_settings)
    # The 50,000 requests above (~10^5 objects) are the bench's, not the client's: left to the collector,
    # a full collection that happens to fall in one mode's window scans them all (~150 ms, ~25 us a
    # call at this rate; it hit the raw aiohttp runs most, whose smaller heap reaches the threshold
    # sooner). Frozen, every mode's collections see only the objects its calls make.
    gc.collect()
    gc.freeze()

    errors: dict[str, int] = {}
    done = 0
    stop = 0.0
    index = 0

    async def worker() -> None:
        nonlocal done, index
        while time.monotonic() < stop:
            request = requests[index % len(requests)]
            index += 1
            try:
                await send(request)
                done += 1
            except Exception as exc:
                name = type(exc).__name__ + (f":{exc.error_class.value}" if hasattr(exc, "error_class") else "")
                errors[name] = errors.get(name, 0) + 1

    # Warm-up: open the connections and fill caches before the clock starts.
    await asyncio.gather(*(send(requests[i]) for i in range(concurrency)), return_exceptions=True)
    stop = time.monotonic() + seconds
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await send.aclose()  # type: ignore[attr-defined]
    return {
        "mode": mode,
        "concurrency": concurrency,
        "requests": done,
        "seconds": wall,
        "rps": done / wall,
        "cpu_us": cpu / done * 1e6 if done else float("nan"),
        "errors": errors,
    }


async def make_sender(mode: str, base_url: str, concurrency: int, load_settings: Any) -> Any:
    import httpx

    settings = load_settings(whatsapp={"api_base_url": base_url, "access_token": TOKEN, "timeout_seconds": 30})
    if mode == "aiohttp":
        return await raw_aiohttp_sender(base_url, settings.whatsapp.api_version, concurrency)

    from opentelemetry.trace import NoOpTracerProvider

    from pipeline.whatsapp import WhatsAppClient

    # "client": spans recorded and handed to an exporter, as in a sender that exports traces (the
    # exporter drops them, so shipping them is not counted). Without an exporter configured the
    # project's provider does not record spans at all, which costs less than this.
    provider = recording_provider() if mode == "client" else NoOpTracerProvider()
    transport: httpx.AsyncBaseTransport | None = None
    limits = httpx.Limits(max_connections=max(concurrency, 400), max_keepalive_connections=max(concurrency, 400))
    if mode == "httpx-default":
        transport = httpx.AsyncHTTPTransport(limits=limits)
    elif mode == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    client = WhatsAppClient(settings.whatsapp, transport=transport, max_connections=max(concurrency, 400),
                            tracer_provider=provider)

    class Send:
        async def __call__(self, request: Any) -> Any:
            return await client.send_message(request, phone_number_id=PHONE_NUMBER_ID, callback_data=request.request_id)

        async def aclose(self) -> None:
            await client.aclose()

    return Send()


def recording_provider() -> Any:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from pipeline.observability.tracing import configure_tracing

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return configure_tracing("delivery-sender", "bench", exporter=Discard())


async def raw_aiohttp_sender(base_url: str, version: str, concurrency: int) -> Any:
    """The baseline: what a hand-written aiohttp client does for the same call, and no more."""
    import aiohttp
    import orjson

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 400)),
        headers={"Authorization": f"Bearer {TOKEN}"},
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    url = f"{base_url}/{version}/{PHONE_NUMBER_ID}/messages"

    class Send:
        async def __call__(self, request: Any) -> Any:
            payload = {"messaging_product": "whatsapp", "recipient_type": "individual"}
            if request.to is not None:
                payload["to"] = request.to.removeprefix("+")
            else:
                payload["recipient"] = request.recipient_user_id  # a BSUID: the request has no `to`
            payload |= {"type": "text", "text": {"body": request.message.text.body},
                        "biz_opaque_callback_data": request.request_id}
            async with session.post(url, data=orjson.dumps(payload),
                                    headers={"Content-Type": "application/json"}) as response:
                body = orjson.loads(await response.read())
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {body}")
                return body["messages"][0]["id"]

        async def aclose(self) -> None:
            await session.close()

    return Send()


def run_one(mode: str, base_url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--measure", mode, "--base-url", base_url,
           "--levels", str(concurrency), "--seconds", str(seconds)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds * 4 + 120)
    if out.returncode != 0:
        return {"mode": mode, "concurrency": concurrency, "failed": out.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- report ---------------------------------------------------------------------------------------


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds per (mode, level); ratios against the baseline of the same round."""
    rows = []
    keys = sorted({(r["concurrency"], r["mode"]) for r in results}, key=lambda k: (k[0], MODES.index(k[1])))
    for level, mode in keys:
        runs = [r for r in results if r["concurrency"] == level and r["mode"] == mode and "rps" in r]
        failed = [r["failed"] for r in results if r["concurrency"] == level and r["mode"] == mode and "failed" in r]
        if not runs:
            rows.append({"mode": mode, "concurrency": level, "failed": failed})
            continue
        cpu_ratios, rps_ratios = [], []
        for r in runs:
            base = next((b for b in results if b["mode"] == "aiohttp" and b["concurrency"] == level
                         and b.get("round") == r["round"] and "rps" in b), None)
            if base is not None:
                cpu_ratios.append(r["cpu_us"] / base["cpu_us"])
                rps_ratios.append(r["rps"] / base["rps"])
        errors: dict[str, int] = {}
        for r in runs:
            for name, count in r["errors"].items():
                errors[name] = errors.get(name, 0) + count
        rows.append({
            "mode": mode, "concurrency": level, "rounds": len(runs), "failed": failed, "errors": errors,
            "rps": statistics.median(r["rps"] for r in runs),
            "cpu_us": statistics.median(r["cpu_us"] for r in runs),
            "cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None,
            "rps_ratio": statistics.median(rps_ratios) if rps_ratios else None,
        })
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'mode':<16} {'C':>4} {'req/s':>8} {'CPU us/req':>11} {'CPU vs aiohttp':>15} {'req/s vs aiohttp':>17}"
          "  errors (all rounds)")
    for r in rows:
        if "rps" not in r:
            print(f"{r['mode']:<16} {r['concurrency']:>4}  failed: {r['failed']}")
            continue
        cpu_ratio = f"{r['cpu_ratio']:.2f}x" if r["cpu_ratio"] is not None else "-"
        rps_ratio = f"{r['rps_ratio']:.2f}x" if r["rps_ratio"] is not None else "-"
        errors = ", ".join(f"{k}={v}" for k, v in r["errors"].items()) or "-"
        if r["failed"]:
            errors += f"; {len(r['failed'])} run(s) failed"
        print(f"{r['mode']:<16} {r['concurrency']:>4} {r['rps']:>8.0f} {r['cpu_us']:>11.0f} {cpu_ratio:>15} "
              f"{rps_ratio:>17}  {errors}")
    print(f"\nclient CPU per call against raw aiohttp in the same rounds (goal <= {TARGET_RATIO}x):")
    for level in sorted({r["concurrency"] for r in rows}):
        ratios = {r["mode"]: r.get("cpu_ratio") for r in rows if r["concurrency"] == level}
        shown = []
        for mode, label in (("client", "spans on"), ("client-untraced", "spans off")):
            ratio = ratios.get(mode)
            if ratio is not None:
                shown.append(f"{label} {ratio:.2f}x ({'met' if ratio <= TARGET_RATIO else 'NOT met'})")
        if shown:
            print(f"  C={level}: " + ", ".join(shown))
    target = next((r for r in rows if r["mode"] == "client" and r["concurrency"] == 300 and "rps" in r), None)
    if target is not None:
        print(f"throughput at C=300 with spans: {target['rps']:.0f} req/s (goal >= 1000): "
              f"{'met' if target['rps'] >= 1000 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["sandbox", "echo"], default="sandbox")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--levels", default="50,200,300,400", help="requests in flight, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode and level, interleaved")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    if args.serve_echo:
        serve_echo(args.serve_echo, args.latency_ms)
        return
    if args.measure:
        import uvloop

        print(json.dumps(uvloop.run(measure(args.measure, args.base_url, levels[0], args.seconds))))
        return

    modes = [m for m in args.modes.split(",") if m]
    server, base_url = start_server(args.server, args.latency_ms)
    print(f"server: {args.server} at {base_url} (pid {server.pid}), {args.latency_ms:.0f} ms latency; "
          f"{args.rounds} rounds of {args.seconds:.0f} s per mode and level; {os.cpu_count()} cores")
    results = []
    try:
        for level in levels:
            for round_ in range(args.rounds):
                shift = round_ % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    result = {**run_one(mode, base_url, level, args.seconds), "round": round_}
                    results.append(result)
                    shown = (f"{result['rps']:.0f} req/s, {result['cpu_us']:.0f} us CPU/req" if "rps" in result
                             else result["failed"])
                    print(f"  C={level:<4} round {round_ + 1} {mode:<16} {shown}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    report(summarise(results))


if __name__ == "__main__":
    main()
