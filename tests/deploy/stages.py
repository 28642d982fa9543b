"""Every stage as its own `python -m pipeline <stage>` process on free ports, for end-to-end tests.

    with LocalStages(settings, workdir) as stages:     # sandbox, ingest, sender, api (+ an API without Kafka)
        stages.api_url, stages.ingest_url, stages.sandbox_url
        stages.scrape_targets()                        # for PrometheusServer

Processes are started in a new session and stopped by their own pid; logs go to `workdir/<stage>.log`.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipeline.config import Settings
from pipeline.local.kafka import free_port
from pipeline.local.prometheus import ScrapeTarget

STAGES = ("api", "sender", "ingest", "sandbox")
APP_SECRET = "e2e-app-secret"
VERIFY_TOKEN = "e2e-verify-token"
MAIN_NUMBER = "106540352242922"
_OWN_PREFIXES = ("KAFKA_", "WHATSAPP_", "API_", "SENDER_", "INGEST_", "SANDBOX_", "LOG_", "OTEL_")


def missing_stages() -> list[str]:
    """Stages whose package cannot be imported or has no `serve` yet."""
    missing = []
    for stage in STAGES:
        try:
            module = importlib.import_module(f"pipeline.{stage}")
        except Exception:  # a half-written stage may fail in any way at import
            missing.append(stage)
            continue
        if not callable(getattr(module, "serve", None)):
            missing.append(stage)
    return missing


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    health_url: str
    ready_url: str | None


@dataclass
class LocalStages:
    settings: Settings
    workdir: Path
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ports = {name: free_port() for name in
                      ("api", "api_no_kafka", "sender", "ingest", "ingest_metrics", "sandbox")}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def api_no_kafka_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api_no_kafka']}"

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sandbox']}"

    def scrape_targets(self) -> list[ScrapeTarget]:
        at = lambda name: f"127.0.0.1:{self.ports[name]}"  # noqa: E731
        return [
            ScrapeTarget("delivery-api", at("api")),
            ScrapeTarget("delivery-api", at("api_no_kafka")),
            ScrapeTarget("delivery-sender", at("sender")),
            ScrapeTarget("delivery-ingest", at("ingest")),  # receiver and consumers: one process, one port
            ScrapeTarget("delivery-sandbox", at("sandbox")),
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
        kafka = self.settings.kafka
        env.update({
            "PIPELINE_ENV": "development",
            "LOG_LEVEL": "WARNING",
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "KAFKA_PARTITIONS": str(kafka.partitions),
            "WHATSAPP_API_BASE_URL": self.sandbox_url,
            "WHATSAPP_ACCESS_TOKEN": "sandbox-token",
            "WHATSAPP_PHONE_NUMBER_ID": MAIN_NUMBER,
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_WEBHOOK_TOKEN": VERIFY_TOKEN,
            "API_KEYS": '{"dev-key": "*"}',
            "API_PUBLISH_TIMEOUT_SECONDS": "1",
            "SENDER_GROUP_ID": self.settings.sender.group_id,
            "SENDER_PAIR_INTERVAL_SECONDS": "0",
            "SENDER_RETRY_MAX_ATTEMPTS": "2",
            "SENDER_RETRY_BASE_DELAY_SECONDS": "0.05",
            "SENDER_RETRY_MAX_DELAY_SECONDS": "0.2",
            "SENDER_BREAKER_FAILURE_THRESHOLD": "2",
            "INGEST_GROUP_ID": self.settings.ingest.group_id,
            "INGEST_METRICS_PORT": str(self.ports["ingest_metrics"]),
            "SANDBOX_APP_SECRET": APP_SECRET,
            "SANDBOX_WEBHOOK_URL": f"{self.ingest_url}/webhooks/whatsapp",
            "SANDBOX_LATENCY_MEDIAN_MS": "20",
            "SANDBOX_SENT_AFTER_MS": "50",
            "SANDBOX_DELIVERED_AFTER_MS": "150",
            "SANDBOX_READ_AFTER_MS": "300",
            "SANDBOX_FAILED_AFTER_MS": "100",
            # `…9030` recipients hang past the client's timeout: ambiguous attempts, quickly.
            "SANDBOX_HANG_SECONDS": "3",
            "WHATSAPP_TIMEOUT_SECONDS": "1",
        })
        return env

    def _start(self, name: str, command: str, port: int, env: dict[str, str], ready: bool = True) -> None:
        with (self.workdir / f"{name}.log").open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pipeline", command, "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}"
        health = f"{base}/_sandbox/config" if command == "sandbox" else f"{base}/healthz"
        self.processes.append(Process(name, popen, health, f"{base}/readyz" if ready else None))

    def start(self, timeout: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self._env()
        self._start("sandbox", "sandbox", self.ports["sandbox"], env, ready=False)
        self._start("ingest", "ingest", self.ports["ingest"], env)
        self._start("sender", "sender", self.ports["sender"], env)
        self._start("api", "api", self.ports["api"], env)
        # A second API whose Kafka never answers: its requests are the `unavailable` outcome.
        dead_kafka = {**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
        self._start("api_no_kafka", "api", self.ports["api_no_kafka"], dead_kafka, ready=False)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            for url in filter(None, (process.health_url, process.ready_url)):
                self._wait(process, url, deadline)

    def _wait(self, process: Process, url: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                code = process.popen.returncode
                raise RuntimeError(f"{process.name} exited with {code}: {self.log_tail(process.name)}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{process.name}: {url} not 200 in time: {self.log_tail(process.name)}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, grace: float = 15.0) -> None:
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in reversed(self.processes):
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()

    def __enter__(self) -> LocalStages:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
