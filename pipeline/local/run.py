"""`pipeline run`: the whole pipeline on one machine, in the foreground.

    pipeline run                  # compact live status; each stage logs to <data dir>/logs/<stage>.log
    pipeline run --logs           # the stages' JSON log lines instead of the status

Starts the broker (unless one already answers), creates the topics, then each stage as its own
process (as in production: one stage's CPU never slows another's event loop), the sandbox when no
`WHATSAPP_ACCESS_TOKEN` is set, and Alertmanager and Prometheus when the machine has them.

Process hygiene: Ctrl-C, SIGTERM, SIGHUP (the terminal closed) and SIGPIPE (`| tee` ended) all stop
everything in reverse order; every child, the Kafka JVM included, also gets SIGTERM from the kernel if
this process dies any other way (`pipeline.local.process.die_with_parent`). One run per data directory:
a second says so and names the first's PID. A stage that dies is restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.config import Settings
from pipeline.local.kafka import CACHE, LocalKafka
from pipeline.local.process import single_instance
from pipeline.local.stack import LocalStack, StackError
from pipeline.local.status import Rates, scrape
from pipeline.store.settings import DEFAULT_DATABASE_URL, sqlite_url
from pipeline.topics import create_topics

_WHAT = {
    "sandbox": "Graph API sandbox (control at /_sandbox/)",
    "ingest": "webhooks at /webhooks/whatsapp",
    "sender": "sender metrics and health",
    "store": "message store: read API (/v1/messages/{id}, /v1/contacts/…), SQLite in the data dir",
    "notify": "callbacks: metrics and health",
    "api": "producer API, docs at /docs",
}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 60.0  # a stage up this long starts its backoff from scratch when it dies again


def _store_in_data_dir(settings: Settings, data_dir: Path) -> Settings:
    """The default SQLite file in the data directory, wherever `pipeline run` is started."""
    if settings.store.database_url.get_secret_value() != DEFAULT_DATABASE_URL:
        return settings
    url = SecretStr(sqlite_url(data_dir / "store" / "store.db"))
    return settings.model_copy(update={"store": settings.store.model_copy(update={"database_url": url})})


def _kafka_address(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass
class _Restarts:
    """Backoff per stage: 1 s, 2 s, 4 s … up to 30 s; forgotten once the stage stayed up a minute."""

    failures: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)

    def died(self, stage: str, now: float) -> float:
        if now - self.started.get(stage, now) >= HEALTHY_AFTER:
            self.failures[stage] = 0
        self.failures[stage] = self.failures.get(stage, 0) + 1
        delay = min(MAX_BACKOFF, 2.0 ** (self.failures[stage] - 1))
        self.due[stage] = now + delay
        return delay


def run_local(settings: Settings, *, data_dir: Path | None = None, monitoring: bool = True, logs: bool = False) -> int:
    """Run until a stop signal; return the exit code for the shell."""
    data_dir = (data_dir or CACHE).resolve()
    console = Console(stderr=True, soft_wrap=True)  # a line is a line, also in a log file or a pipe
    with single_instance(data_dir / "run.pid") as other:
        if other is not None:
            console.print(
                f"pipeline run is already running (pid {other}, data {data_dir}); stop it first "
                f"(Ctrl-C in its terminal, or kill {other})", markup=False, highlight=False,
            )
            return 1
        return _run(settings, data_dir, console, monitoring=monitoring, logs=logs)


def _run(settings: Settings, data_dir: Path, console: Console, *, monitoring: bool, logs: bool) -> int:
    stopping: list[int] = []

    def on_signal(signum: int, _: FrameType | None) -> None:
        stopping.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    broker: LocalKafka | None = None
    log_dir = data_dir / "logs"
    stack = LocalStack(_store_in_data_dir(settings, data_dir), log_dir=log_dir)
    extra: list[subprocess.Popen[bytes]] = []
    try:
        host, port = _kafka_address(settings.kafka.bootstrap_servers)
        if not _accepts(host, port):
            if host not in ("127.0.0.1", "localhost"):
                console.print(f"Kafka at {settings.kafka.bootstrap_servers} does not answer", markup=False)
                return 1
            console.print(f"starting Kafka on {host}:{port} …", markup=False)
            broker = LocalKafka(data_dir=data_dir / "kafka-data", port=port, tied_to_parent=True)
            broker.start()
            broker.wait_ready()
        created = asyncio.run(create_topics(settings.kafka))
        console.print(f"topics: {'created ' + ', '.join(created) if created else 'all present'}", markup=False)
        try:
            stack.start()
        except StackError as exc:
            console.print(f"{exc}; see {log_dir}", markup=False, highlight=False)
            return 1
        table = Table(title="WhatsApp delivery pipeline")
        for column in ("stage", "url", "what"):
            table.add_column(column)
        table.add_row("kafka", settings.kafka.bootstrap_servers, "broker (KRaft)")
        for name, url in stack.urls.items():
            table.add_row(name, url, _WHAT.get(name, name))
        if "store" in stack.urls:
            table.add_row("console", f"{stack.urls['store']}/console/", "activity console (docs/console.md)")
        if monitoring:
            extra = _start_monitoring(stack.settings, data_dir, table)
        console.print(table)
        console.print(f"logs: {log_dir}/<stage>.log (`pipeline run --logs` streams them)", markup=False)
        if stack.use_sandbox:
            console.print("No WHATSAPP_ACCESS_TOKEN: messages go to the sandbox. Try:", markup=False)
            console.print("  .venv/bin/pipeline send --to +16505551234 --text 'hello'", markup=False)
            console.print("  .venv/bin/pipeline demo          # mixed traffic for the dashboards", markup=False)
        if stack.settings.notify.demo_receiver and "notify" in stack.urls:
            console.print(f"No NOTIFY_SUBSCRIPTIONS: callbacks print here (demo receiver on port "
                          f"{stack.settings.notify.demo_receiver_port}); see docs/callbacks.md.", markup=False)
        console.print("Ctrl-C stops everything.", markup=False)
        _supervise(stack, console, stopping, log_dir if logs else None)
        return 0
    except BrokenPipeError:
        return 0  # the reader of our output is gone (SIGPIPE's cousin): stop like Ctrl-C
    finally:
        for process in reversed(extra):
            process.terminate()
            process.wait(timeout=15)
        stack.stop()
        if broker is not None:
            _quietly(console, "stopping Kafka …")
            broker.stop()


def _supervise(stack: LocalStack, console: Console, stopping: list[int], stream_from: Path | None) -> None:
    """Until a stop signal: restart dead stages with backoff, and show the status (or stream the logs)."""
    restarts = _Restarts(started=dict.fromkeys(stack.stages, time.monotonic()))
    metrics = [f"{stack.urls[s]}/metrics" for s in ("sender", "ingest") if s in stack.urls]
    rates = Rates()
    offsets: dict[Path, int] = {}
    live = Live(console=console, refresh_per_second=1, transient=True) if console.is_terminal and not stream_from \
        else None
    next_status = 0.0
    if live is not None:
        live.start()
    try:
        while not stopping:
            now = time.monotonic()
            dead = stack.dead()
            if dead is not None:
                stack.children.remove(dead)
                delay = restarts.died(dead.name, now)
                _quietly(console, f"{dead.name} exited with {dead.process.returncode}; restarting in {delay:.0f} s "
                                  f"(see {stack.log_dir}/{dead.name}.log)")
            for stage, due in list(restarts.due.items()):
                if now >= due:
                    del restarts.due[stage]
                    try:
                        stack.start_stage(stage)
                        restarts.started[stage] = time.monotonic()
                        _quietly(console, f"{stage} restarted")
                    except StackError as exc:
                        stack.children[:] = [c for c in stack.children if c.name != stage or c.process.poll() is None]
                        delay = restarts.died(stage, time.monotonic())
                        _quietly(console, f"{exc}; retrying in {delay:.0f} s")
            if stream_from is not None:
                _stream_logs(stream_from, offsets, sys.stdout)
            elif now >= next_status:
                line = _status_line(stack, rates.update(scrape(metrics)))
                if live is not None:
                    live.update(line)
                else:
                    console.print(line)
                next_status = now + (2.0 if live is not None else 30.0)
            time.sleep(0.3)
    finally:
        if live is not None:
            live.stop()


def _status_line(stack: LocalStack, rates: dict[str, float]) -> Text:
    up = sum(1 for c in stack.children if c.process.poll() is None)
    text = Text(f"stages up {up}/{len(stack.stages)}  ")
    text.append(f"sent {rates['sent']:.1f}/s  ", style="green")
    text.append(f"delivered {rates['delivered']:.1f}/s  ", style="green")
    text.append(f"failed {rates['failed']:.1f}/s", style="red" if rates["failed"] else "")
    if "api" in stack.urls:
        text.append(f"   api {stack.urls['api']}")
    return text


def _stream_logs(log_dir: Path, offsets: dict[Path, int], out: IO[str]) -> None:
    for path in sorted(log_dir.glob("*.log")):
        with path.open("rb") as handle:
            handle.seek(offsets.get(path, 0))
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offsets[path] = offsets.get(path, 0) + len(complete)
        if complete:
            out.write(complete.decode("utf-8", "replace"))
            out.flush()


def _quietly(console: Console, message: str) -> None:
    with contextlib.suppress(OSError):  # BrokenPipeError: nobody reads our output any more
        console.print(message, markup=False, highlight=False)


def _start_monitoring(settings: Settings, data_dir: Path, table: Table) -> list[subprocess.Popen[bytes]]:
    """Alertmanager and Prometheus with the repo's routes and rules, if the machine has them (make installs
    Debian's packages). Alerts go to ALERT_WEBHOOK_URL when set; otherwise only Alertmanager's UI lists them."""
    from pipeline.local.alertmanager import DEFAULT_PORT, NOWHERE, AlertmanagerServer
    from pipeline.local.prometheus import start_local_prometheus
    from pipeline.local.server import preferred_port

    processes: list[subprocess.Popen[bytes]] = []
    alertmanagers: list[str] = []
    if AlertmanagerServer.binary() is not None:
        alertmanager = AlertmanagerServer(
            data_dir / "alertmanager",
            webhook_url=os.environ.get("ALERT_WEBHOOK_URL") or NOWHERE,
            port=preferred_port(DEFAULT_PORT),
        )
        alertmanager.start()
        assert alertmanager.process is not None
        processes.append(alertmanager.process)
        alertmanager.wait_ready()
        alertmanagers.append(alertmanager.address)
        table.add_row("alertmanager", alertmanager.url, "routes alerts by severity to ALERT_WEBHOOK_URL")
    started = start_local_prometheus(settings, data_dir / "prometheus", alertmanagers)
    if started is not None:
        process, url = started
        processes.append(process)
        table.add_row("prometheus", url, "scrapes every stage, evaluates the alert rules")
    return processes
