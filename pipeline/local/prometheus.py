"""A real Prometheus for the local run and the tests: scrapes the stages, evaluates the repo's rules.

    server = PrometheusServer(workdir, local_targets(settings), scrape_interval="1s")
    server.start(); server.wait_targets_up()
    server.query('sum(rate(delivery_messages_total[1m]))')   # [{"metric": {...}, "value": [ts, "0.5"]}]
    server.alerts_named("DeliveryDeadLetters")              # [{"labels": {...}, "state": "firing", ...}]
    server.stop()

`pipeline run` calls `start_local_prometheus(settings, workdir)`. The binary is Debian's `prometheus`
package (`make setup` installs it); without it both return/raise with a clear message. The compose stack
uses the committed `deploy/prometheus/prometheus.yml` instead, with the same job names.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Settings
from pipeline.local.kafka import PROJECT_ROOT
from pipeline.local.server import ServerError, ServerProcess, preferred_port

RULES_DIR = PROJECT_ROOT / "deploy" / "prometheus" / "rules"
DEFAULT_PORT = 9090


class PrometheusError(ServerError):
    pass


@dataclass(frozen=True)
class ScrapeTarget:
    """One `/metrics` endpoint; `job` is the stage's service name (`delivery-sender`, …)."""

    job: str
    address: str  # host:port


def local_targets(settings: Settings) -> list[ScrapeTarget]:
    """Every stage's metrics endpoint as `pipeline run` starts them (ports from the settings)."""

    def at(host: str, port: int) -> str:
        # A stage bound to every interface is scraped on loopback.
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"  # noqa: S104

    # Ingest serves /metrics on its webhook port unless it runs the consumers alone (then on
    # metrics_port); one process never serves both, so its counters are scraped once.
    ingest_port = settings.ingest.metrics_port if settings.ingest.components == "consumers" else settings.ingest.port
    return [
        ScrapeTarget("delivery-api", at(settings.api.host, settings.api.port)),
        ScrapeTarget("delivery-sender", at(settings.sender.host, settings.sender.port)),
        ScrapeTarget("delivery-ingest", at(settings.ingest.host, ingest_port)),
        ScrapeTarget("delivery-notify", at(settings.notify.host, settings.notify.port)),
        ScrapeTarget("delivery-sandbox", at(settings.sandbox.host, settings.sandbox.port)),
        ScrapeTarget("delivery-store", at(settings.store.host, settings.store.port)),
    ]


def render_config(
    targets: Iterable[ScrapeTarget],
    rule_files: Sequence[Path | str] = (RULES_DIR / "*.yml",),
    scrape_interval: str = "5s",
    evaluation_interval: str | None = None,
    alertmanagers: Sequence[str] = (),
) -> str:
    """prometheus.yml scraping `targets` (grouped into one job per stage) with the given rule files,
    sending alerts to `alertmanagers` (host:port each)."""
    jobs: dict[str, list[str]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target.address)
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": addresses}]}
            for job, addresses in jobs.items()
        ],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class PrometheusServer(ServerProcess):
    """A `prometheus` process on 127.0.0.1 with its config and storage under `workdir`."""

    name = "prometheus"
    binaries = ("prometheus",)
    error = PrometheusError

    targets: Sequence[ScrapeTarget]
    rule_files: Sequence[Path | str] = (RULES_DIR / "*.yml",)
    scrape_interval: str = "5s"
    evaluation_interval: str | None = None
    retention: str = "3d"
    alertmanagers: Sequence[str] = ()

    def command(self, binary: str) -> list[str]:
        config = self.workdir / "prometheus.yml"
        config.write_text(
            render_config(
                self.targets, self.rule_files, self.scrape_interval, self.evaluation_interval, self.alertmanagers
            )
        )
        return [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.address}",
            "--web.enable-lifecycle",
            "--enable-feature=exemplar-storage",  # the stages' trace_id exemplars
        ]

    def wait_targets_up(self, timeout: float = 60.0) -> None:
        """Wait until every configured target was scraped successfully at least once."""
        expected = {t.address for t in self.targets}

        def all_up() -> bool:
            active = self._api("/api/v1/targets", {"state": "active"})["activeTargets"]
            up = {t["discoveredLabels"]["__address__"] for t in active if t["health"] == "up"}
            return expected <= up

        self._poll_until(all_up, timeout, f"scrape all of {sorted(expected)}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or a one-element list for a scalar)."""
        data = self._api("/api/v1/query", {"query": expr})
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts with their labels and `state`."""
        return list(self._api("/api/v1/alerts")["alerts"])

    def alerts_named(self, alertname: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["labels"].get("alertname") == alertname]

    def rules(self) -> list[dict[str, Any]]:
        return list(self._api("/api/v1/rules")["groups"])

    def _api(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = self._get(path, params)
        body: dict[str, Any] = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params or ''}: {body.get('errorType')}: {body.get('error')}")
        data: dict[str, Any] = body["data"]
        return data


def start_local_prometheus(
    settings: Settings, workdir: Path, alertmanagers: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str] | None:
    """For `pipeline run`: Prometheus on 9090 (or a free port if taken) scraping every local stage.

    Returns None when the binary is missing, so the pipeline still runs without it.
    """
    if PrometheusServer.binary() is None:
        return None
    server = PrometheusServer(
        workdir, local_targets(settings), port=preferred_port(DEFAULT_PORT), alertmanagers=alertmanagers
    )
    server.start()
    try:
        server.wait_ready()
    except PrometheusError:
        server.stop()  # leave no orphan; the error names the log with Prometheus' own words
        raise
    assert server.process is not None
    return server.process, server.url
