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

from dataclasses import dataclass
from typing import Any

import yaml

from pipeline.local.kafka import PROJECT_ROOT
from pipeline.local.server import ServerError, ServerProcess

CONFIG = PROJECT_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DEFAULT_PORT = 9093
# Where alerts go when no ALERT_WEBHOOK_URL is set: nowhere (the discard port); Alertmanager's UI still
# lists them, and its log says the notification failed.
NOWHERE = "http://127.0.0.1:9/alert-webhook-not-configured"


class AlertmanagerError(ServerError):
    pass


def render_config(webhook_url: str, *, group_wait: str | None = None, group_interval: str | None = None) -> str:
    """The committed configuration with the webhook URL filled in (and, optionally, shorter delays)."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text().replace("${ALERT_WEBHOOK_URL}", webhook_url))
    for key, value in (("group_wait", group_wait), ("group_interval", group_interval)):
        if value is not None:
            config["route"][key] = value
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class AlertmanagerServer(ServerProcess):
    """An Alertmanager process on 127.0.0.1 with its config and state under `workdir`."""

    name = "alertmanager"
    binaries = ("prometheus-alertmanager", "alertmanager")  # Debian's name, then upstream's
    error = AlertmanagerError

    webhook_url: str = NOWHERE
    group_wait: str | None = None
    group_interval: str | None = None

    def command(self, binary: str) -> list[str]:
        config = self.workdir / "alertmanager.yml"
        delays = {"group_wait": self.group_wait, "group_interval": self.group_interval}
        config.write_text(render_config(self.webhook_url, **delays))
        return [
            binary,
            f"--config.file={config}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            # A single local instance: no gossip port (it would clash between parallel runs).
            "--cluster.listen-address=",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds, with their `status` (active, suppressed by an inhibition, …)."""
        body: list[dict[str, Any]] = self._get("/api/v2/alerts").json()
        return body

