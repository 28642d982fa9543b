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

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from pipeline.config import Settings
from pipeline.local.kafka import PROJECT_ROOT, free_port
from pipeline.local.process import die_with_parent

RULES_DIR = PROJECT_ROOT / "deploy" / "prometheus" / "rules"
DEFAULT_PORT = 9090


class PrometheusError(RuntimeError):
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
    ingest_port = settings.ingest.metrics_port if _ingest_components(settings) == "consumers" else settings.ingest.port
    return [
        ScrapeTarget("delivery-api", at(settings.api.host, settings.api.port)),
        ScrapeTarget("delivery-sender", at(settings.sender.host, settings.sender.port)),
        ScrapeTarget("delivery-ingest", at(settings.ingest.host, ingest_port)),
        ScrapeTarget("delivery-notify", at(settings.notify.host, settings.notify.port)),
        ScrapeTarget("delivery-sandbox", at(settings.sandbox.host, settings.sandbox.port)),
        ScrapeTarget("delivery-store", at(settings.store.host, settings.store.port)),
    ]


def _ingest_components(settings: Settings) -> str:
    # `components` (all | receiver | consumers) arrives with the ingest stage's settings.
    return str(getattr(settings.ingest, "components", "all"))


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


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class PrometheusServer:
    """A `prometheus` process on 127.0.0.1 with its config and storage under `workdir`."""

    workdir: Path
    targets: Sequence[ScrapeTarget]
    rule_files: Sequence[Path | str] = (RULES_DIR / "*.yml",)
    scrape_interval: str = "5s"
    evaluation_interval: str | None = None
    port: int = 0
    retention: str = "3d"
    alertmanagers: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise PrometheusError("`prometheus` is not installed (apt-get install prometheus; `make setup` does it)")
        if not self.port:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            render_config(
                self.targets, self.rule_files, self.scrape_interval, self.evaluation_interval, self.alertmanagers
            )
        )
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 — fixed argument list, no shell
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--storage.tsdb.retention.time={self.retention}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--enable-feature=exemplar-storage",  # the stages' trace_id exemplars
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,  # the caller stops it in order; Ctrl-C must not hit it first
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._poll_until(lambda: self._get("/-/ready").status_code == 200, timeout, "become ready")

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

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> PrometheusServer:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=10.0)

    def _api(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = self._get(path, params)
        body: dict[str, Any] = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params or ''}: {body.get('errorType')}: {body.get('error')}")
        data: dict[str, Any] = body["data"]
        return data

    def _poll_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode}; see {self.log_file}")
            try:
                if check():
                    return
            except (httpx.HTTPError, PrometheusError, KeyError) as exc:
                last_error = f" (last error: {exc})"
            time.sleep(0.2)
        raise PrometheusError(f"prometheus did not {what} within {timeout:.0f}s{last_error}; see {self.log_file}")


def start_local_prometheus(
    settings: Settings, workdir: Path, alertmanagers: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str] | None:
    """For `pipeline run`: Prometheus on 9090 (or a free port if taken) scraping every local stage.

    Returns None when the binary is missing, so the pipeline still runs without it.
    """
    if prometheus_binary() is None:
        return None
    port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_port()
    server = PrometheusServer(workdir, local_targets(settings), port=port, alertmanagers=alertmanagers)
    server.start()
    try:
        server.wait_ready()
    except PrometheusError:
        server.stop()  # leave no orphan; the error names the log with Prometheus' own words
        raise
    assert server.process is not None
    return server.process, server.url
