"""The local Prometheus runner against a real `prometheus` binary scraping a real exporter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pipeline.config import load_settings
from pipeline.local import prometheus
from pipeline.local.kafka import free_port
from pipeline.local.prometheus import (
    PrometheusError,
    PrometheusServer,
    ScrapeTarget,
    local_targets,
    render_config,
    start_local_prometheus,
)


def test_local_targets_follow_the_settings() -> None:
    settings = load_settings(api={"host": "0.0.0.0", "port": 18080}, sender={"port": 19101},
                             ingest={"port": 18081, "metrics_port": 19102}, sandbox={"port": 18090},
                             store={"port": 18082}, notify={"port": 19103})
    assert local_targets(settings) == [
        ScrapeTarget("delivery-api", "127.0.0.1:18080"),
        ScrapeTarget("delivery-sender", "127.0.0.1:19101"),
        ScrapeTarget("delivery-ingest", "127.0.0.1:18081"),
        ScrapeTarget("delivery-notify", "127.0.0.1:19103"),
        ScrapeTarget("delivery-sandbox", "127.0.0.1:18090"),
        ScrapeTarget("delivery-store", "127.0.0.1:18082"),
    ]


def test_ingest_running_only_its_consumers_is_scraped_on_the_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_COMPONENTS", "consumers")
    settings = load_settings(ingest={"port": 18081, "metrics_port": 19102})
    assert ScrapeTarget("delivery-ingest", "127.0.0.1:19102") in local_targets(settings)


def test_render_config_groups_targets_by_job() -> None:
    targets = [ScrapeTarget("delivery-ingest", "127.0.0.1:1"), ScrapeTarget("delivery-api", "127.0.0.1:2"),
               ScrapeTarget("delivery-ingest", "127.0.0.1:3")]
    config = yaml.safe_load(render_config(targets, ["/rules/*.yml"], scrape_interval="1s"))
    assert config["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert config["rule_files"] == ["/rules/*.yml"]
    assert [(j["job_name"], j["static_configs"][0]["targets"]) for j in config["scrape_configs"]] == [
        ("delivery-ingest", ["127.0.0.1:1", "127.0.0.1:3"]),
        ("delivery-api", ["127.0.0.1:2"]),
    ]


@pytest.fixture
def exporter() -> Iterator[tuple[str, Counter, Gauge]]:
    """A real /metrics endpoint with two catalog metrics, on a free port."""
    registry = CollectorRegistry()
    dead = Counter("delivery_dead_letters", "dead letters", ["stage", "reason"], registry=registry)
    circuit = Gauge("delivery_circuit_state", "circuit", ["phone_number_id"], registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}", dead, circuit
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_scrapes_evaluates_the_repo_rules_and_answers_queries(
    tmp_path: Path, exporter: tuple[str, Counter, Gauge]
) -> None:
    address, dead, circuit = exporter
    circuit.labels(phone_number_id="111").set(0)
    dead.labels(stage="sender", reason="payload_rejected").inc(3)
    with PrometheusServer(tmp_path, [ScrapeTarget("delivery-sender", address)], scrape_interval="1s") as server:
        server.wait_targets_up(timeout=30)
        # The repository's rule files are loaded (SLO groups and the operational group).
        groups = {g["name"] for g in server.rules()}
        assert {"delivery-operations", "delivery-slo-send_error_ratio"} <= groups
        deadline = time.monotonic() + 30
        firing: list[dict[str, object]] = []
        while time.monotonic() < deadline and not firing:
            firing = server.alerts_named("DeliveryDeadLetters")
            time.sleep(0.5)
        # A dead-letter series born since the last window fires at once (no `for`), with its labels.
        assert firing, "DeliveryDeadLetters did not fire"
        assert firing[0]["state"] == "firing"
        assert firing[0]["labels"]["reason"] == "payload_rejected"
        (sample,) = server.query('delivery_dead_letters_total{job="delivery-sender"}')
        assert sample["metric"]["stage"] == "sender"
        assert float(sample["value"][1]) == 3.0
        assert server.alerts_named("DeliveryCircuitOpenTooLong") == []
    assert server.process is not None
    assert server.process.poll() is not None, "stopped on exit"


def test_a_bad_query_names_the_problem(tmp_path: Path) -> None:
    with PrometheusServer(tmp_path, [], scrape_interval="1s") as server, pytest.raises(
        PrometheusError, match="bad_data"
    ):
        server.query("sum(rate(x[1m])")


def test_start_local_prometheus_takes_another_port_when_the_default_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: tuple[str, Counter, Gauge]
) -> None:
    address, _, _ = exporter
    busy = int(address.rsplit(":", 1)[1])  # the exporter holds it
    monkeypatch.setattr(prometheus, "DEFAULT_PORT", busy)
    started = start_local_prometheus(load_settings(), tmp_path)
    assert started is not None
    process, url = started
    try:
        assert not url.endswith(f":{busy}")
        assert (tmp_path / "prometheus.yml").exists()
        config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
        assert {j["job_name"] for j in config["scrape_configs"]} == {
            "delivery-api", "delivery-sender", "delivery-ingest", "delivery-notify", "delivery-sandbox",
            "delivery-store",
        }
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_a_rule_file_prometheus_rejects_is_reported_with_its_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(rate(x[1m])\n")
    server = PrometheusServer(tmp_path / "prom", [], rule_files=[bad], scrape_interval="1s")
    server.start()
    try:
        with pytest.raises(PrometheusError, match="exited") as raised:
            server.wait_ready(timeout=30)
        assert str(server.log_file) in str(raised.value)
        assert "parse error" in server.log_file.read_text()
    finally:
        server.stop()
