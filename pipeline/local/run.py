"""`pipeline run`: the whole pipeline on one machine, in the foreground.

Starts the broker (unless one already answers), creates the topics, then each stage as its own
process (as in production: one stage's CPU never slows another's event loop), the sandbox when no
`WHATSAPP_ACCESS_TOKEN` is set, and Prometheus when the machine has it. Ctrl-C or SIGTERM stops
everything in reverse order and leaves no child (and no JVM) behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from types import FrameType

from rich.console import Console
from rich.table import Table

from pipeline.config import Settings
from pipeline.local.kafka import PROJECT_ROOT, LocalKafka
from pipeline.local.stack import LocalStack, StackError
from pipeline.topics import create_topics

_WHAT = {
    "sandbox": "Graph API sandbox (control at /_sandbox/)",
    "ingest": "webhooks at /webhooks/whatsapp",
    "sender": "sender metrics and health",
    "api": "producer API, docs at /docs",
}


def _kafka_address(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def run_local(settings: Settings) -> int:
    """Run until Ctrl-C or until a stage dies; return the exit code for the shell."""
    console = Console(stderr=True)
    stopping = False

    def on_signal(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    broker: LocalKafka | None = None
    stack = LocalStack(settings)
    monitoring: list[subprocess.Popen[bytes]] = []
    try:
        host, port = _kafka_address(settings.kafka.bootstrap_servers)
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
        try:
            stack.start()
        except StackError as exc:
            console.print(f"[red]{exc}[/red]")
            return 1
        table = Table(title="WhatsApp delivery pipeline")
        for column in ("stage", "url", "what"):
            table.add_column(column)
        table.add_row("kafka", settings.kafka.bootstrap_servers, "broker (KRaft)")
        for name, url in stack.urls.items():
            table.add_row(name, url, _WHAT[name])
        monitoring = _start_prometheus(stack.settings, table)
        console.print(table)
        if stack.use_sandbox:
            console.print("No WHATSAPP_ACCESS_TOKEN: messages go to the sandbox. Try:")
            console.print("  .venv/bin/pipeline send --to +16505551234 --text 'hello'")
            console.print("  .venv/bin/pipeline demo          # mixed traffic for the dashboards")
        console.print("Ctrl-C stops everything.")
        while not stopping:
            dead = stack.dead()
            if dead is not None:
                console.print(f"[red]{dead.name} exited with {dead.process.returncode}; stopping[/red]")
                return 1
            time.sleep(0.3)
        return 0
    finally:
        for process in reversed(monitoring):
            process.terminate()
            process.wait(timeout=15)
        stack.stop()
        if broker is not None:
            console.print("stopping Kafka …")
            broker.stop()


def _start_prometheus(settings: Settings, table: Table) -> list[subprocess.Popen[bytes]]:
    """Alertmanager and Prometheus with the repo's routes and rules, if the machine has them (make installs
    Debian's packages). Alerts go to ALERT_WEBHOOK_URL when set; otherwise only Alertmanager's UI lists them."""
    from pipeline.local.alertmanager import DEFAULT_PORT, NOWHERE, AlertmanagerServer, alertmanager_binary
    from pipeline.local.kafka import free_port
    from pipeline.local.prometheus import _port_free, start_local_prometheus

    processes: list[subprocess.Popen[bytes]] = []
    alertmanagers: list[str] = []
    if alertmanager_binary() is not None:
        alertmanager = AlertmanagerServer(
            PROJECT_ROOT / ".cache" / "alertmanager",
            webhook_url=os.environ.get("ALERT_WEBHOOK_URL") or NOWHERE,
            port=DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_port(),
        )
        alertmanager.start()
        assert alertmanager.process is not None
        processes.append(alertmanager.process)
        alertmanager.wait_ready()
        alertmanagers.append(alertmanager.address)
        table.add_row("alertmanager", alertmanager.url, "routes alerts by severity to ALERT_WEBHOOK_URL")
    started = start_local_prometheus(settings, PROJECT_ROOT / ".cache" / "prometheus", alertmanagers)
    if started is not None:
        process, url = started
        processes.append(process)
        table.add_row("prometheus", url, "scrapes every stage, evaluates the alert rules")
    return processes
