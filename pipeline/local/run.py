"""`pipeline run`: the whole pipeline on one machine, in the foreground.

Starts the broker (unless one already answers), creates the topics, then each stage as its own
process (as in production: one stage's CPU never slows another's event loop), and the sandbox when no
`WHATSAPP_ACCESS_TOKEN` is set. Ctrl-C or SIGTERM stops everything in reverse order and leaves no
child (and no JVM) behind.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from pipeline.config import SANDBOX_ACCESS_TOKEN, Settings
from pipeline.local.kafka import PROJECT_ROOT, LocalKafka
from pipeline.topics import create_topics

SANDBOX_APP_SECRET = "sandbox-app-secret"  # noqa: S105 — the sandbox's public, fake secret
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"  # noqa: S105
SANDBOX_PHONE_NUMBER_ID = "106540352242922"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    url: str


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _wait_port(host: str, port: int, child: Child, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            return False
        if _accepts(host, port):
            return True
        time.sleep(0.2)
    return False


def _child_env(settings: Settings, use_sandbox: bool) -> dict[str, str]:
    env = dict(os.environ)
    if use_sandbox:
        sandbox = f"http://{settings.sandbox.host}:{settings.sandbox.port}"
        env["WHATSAPP_API_BASE_URL"] = sandbox
        env["WHATSAPP_ACCESS_TOKEN"] = SANDBOX_ACCESS_TOKEN
        env.setdefault("WHATSAPP_APP_SECRET", SANDBOX_APP_SECRET)
        env.setdefault("SANDBOX_APP_SECRET", env["WHATSAPP_APP_SECRET"])
        env.setdefault("WHATSAPP_WEBHOOK_TOKEN", SANDBOX_VERIFY_TOKEN)
        env.setdefault("WHATSAPP_PHONE_NUMBER_ID", SANDBOX_PHONE_NUMBER_ID)
        env.setdefault(
            "SANDBOX_WEBHOOK_URL", f"http://{settings.ingest.host}:{settings.ingest.port}/webhooks/whatsapp"
        )
        env.setdefault("SANDBOX_LATENCY_MEDIAN_MS", "150")
    return env


def _stages(settings: Settings, use_sandbox: bool) -> list[tuple[str, str, int, str]]:
    """(command, host, port, what to show) for each stage that exists in this checkout."""
    candidates = [
        ("sandbox", settings.sandbox.host, settings.sandbox.port, "Graph API sandbox"),
        ("ingest", settings.ingest.host, settings.ingest.port, "webhooks at /webhooks/whatsapp"),
        ("sender", settings.sender.host, settings.sender.port, "sender metrics"),
        ("api", settings.api.host, settings.api.port, "producer API, docs at /docs"),
    ]
    return [
        c for c in candidates
        if (use_sandbox or c[0] != "sandbox") and _stage_exists(c[0])
    ]


def _stage_exists(name: str) -> bool:
    # An empty folder imports as a namespace package, so look for a real package with `serve`.
    spec = importlib.util.find_spec(f"pipeline.{name}")
    return spec is not None and spec.origin is not None and (Path(spec.origin).parent / "__init__.py").exists()


def run_local(settings: Settings) -> int:
    """Run until Ctrl-C or until a stage dies; return the exit code for the shell."""
    console = Console(stderr=True)
    broker: LocalKafka | None = None
    children: list[Child] = []
    stopping = False

    def on_signal(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    exit_code = 0
    try:
        host, port = _host_port(settings.kafka.bootstrap_servers)
        if not _accepts(host, port):
            if host not in ("127.0.0.1", "localhost"):
                console.print(f"[red]Kafka at {settings.kafka.bootstrap_servers} does not answer[/red]")
                return 1
            console.print(f"starting Kafka on {host}:{port} …")
            broker = LocalKafka(data_dir=PROJECT_ROOT / ".cache" / "kafka-data", port=port)
            broker.start()
            broker.wait_ready()
        created = asyncio.run(create_topics(settings.kafka))
        console.print(f"topics: {'created ' + ', '.join(created) if created else 'all present'}")

        use_sandbox = settings.whatsapp.access_token is None
        env = _child_env(settings, use_sandbox)
        table = Table(title="WhatsApp delivery pipeline", show_header=True)
        table.add_column("stage")
        table.add_column("url")
        table.add_column("what")
        table.add_row("kafka", settings.kafka.bootstrap_servers, "broker (KRaft)")
        for command, stage_host, stage_port, what in _stages(settings, use_sandbox):
            process = subprocess.Popen(  # noqa: S603 — our own interpreter and module
                [sys.executable, "-m", "pipeline", command],
                env=env,
                start_new_session=True,  # we stop children in order; Ctrl-C must not hit them first
            )
            child = Child(command, process, f"http://{stage_host}:{stage_port}")
            children.append(child)
            if not _wait_port(stage_host, stage_port, child):
                console.print(f"[red]{command} did not start (exit {process.poll()})[/red]")
                return 1
            table.add_row(command, child.url, what)
        prometheus = _start_prometheus(settings, console)
        if prometheus is not None:
            children.insert(0, prometheus)
            table.add_row("prometheus", prometheus.url, "scrapes every stage, evaluates the alert rules")
        console.print(table)
        if use_sandbox:
            console.print("no WHATSAPP_ACCESS_TOKEN: sending to the sandbox. Try:")
            console.print("  .venv/bin/pipeline send --to +16505551234 --text 'hello'")
        console.print("Ctrl-C stops everything.")

        while not stopping:
            for child in children:
                if child.process.poll() is not None:
                    console.print(f"[red]{child.name} exited with {child.process.returncode}; stopping[/red]")
                    exit_code = 1
                    stopping = True
            time.sleep(0.3)
        return exit_code
    finally:
        _stop_children(children, console)
        if broker is not None:
            console.print("stopping Kafka …")
            broker.stop()


def _start_prometheus(settings: Settings, console: Console) -> Child | None:
    """Prometheus with the repo's rules, if the machine has it (make installs Debian's package)."""
    try:
        from pipeline.local.prometheus import start_local_prometheus
    except ImportError:
        return None
    started = start_local_prometheus(settings, PROJECT_ROOT / ".cache" / "prometheus")
    if started is None:
        return None
    process, url = started
    return Child("prometheus", process, url)


def _stop_children(children: list[Child], console: Console, grace: float = 20.0) -> None:
    for child in reversed(children):  # the API first (stop taking work), Kafka-side stages after
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in reversed(children):
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()

