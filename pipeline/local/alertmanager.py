"""A real Alertmanager for the local run and the tests, with the routes of deploy/alertmanager/alertmanager.yml.

    server = AlertmanagerServer(workdir, webhook_url="http://127.0.0.1:5001/alerts")
    server.start(); server.wait_ready()
    PrometheusServer(..., alertmanagers=[server.address])   # Prometheus sends its alerts here
    server.stop()

The binary is Debian's `prometheus-alertmanager` (`make setup` installs it). The routes, receivers and
inhibitions live once, in the committed file; only `${ALERT_WEBHOOK_URL}` (and, for tests, the grouping
delays) are filled in here.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from pipeline.local.kafka import PROJECT_ROOT, free_port
from pipeline.local.process import die_with_parent

CONFIG = PROJECT_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DEFAULT_PORT = 9093
# Where alerts go when no ALERT_WEBHOOK_URL is set: nowhere (the discard port); Alertmanager's UI still
# lists them, and its log says the notification failed.
NOWHERE = "http://127.0.0.1:9/alert-webhook-not-configured"


class AlertmanagerError(RuntimeError):
    pass


def alertmanager_binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def render_config(webhook_url: str, *, group_wait: str | None = None, group_interval: str | None = None) -> str:
    """The committed configuration with the webhook URL filled in (and, optionally, shorter delays)."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text().replace("${ALERT_WEBHOOK_URL}", webhook_url))
    for key, value in (("group_wait", group_wait), ("group_interval", group_interval)):
        if value is not None:
            config["route"][key] = value
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class AlertmanagerServer:
    """An Alertmanager process on 127.0.0.1 with its config and state under `workdir`."""

    workdir: Path
    webhook_url: str = NOWHERE
    port: int = 0
    group_wait: str | None = None
    group_interval: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "alertmanager.log"

    def start(self) -> None:
        binary = alertmanager_binary()
        if binary is None:
            raise AlertmanagerError(
                "`prometheus-alertmanager` is not installed (apt-get install prometheus-alertmanager; `make setup`)"
            )
        if not self.port:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        delays = {"group_wait": self.group_wait, "group_interval": self.group_interval}
        config.write_text(render_config(self.webhook_url, **delays))
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 — fixed argument list, no shell
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    # A single local instance: no gossip port (it would clash between parallel runs).
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AlertmanagerError(f"alertmanager exited with {self.process.returncode}; see {self.log_file}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AlertmanagerError(f"alertmanager did not become ready within {timeout:.0f}s; see {self.log_file}")

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds, with their `status` (active, suppressed by an inhibition, …)."""
        body: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v2/alerts", timeout=10).json()
        return body

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


__all__ = ["AlertmanagerError", "AlertmanagerServer", "alertmanager_binary", "render_config"]
