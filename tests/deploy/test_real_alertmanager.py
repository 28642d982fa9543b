"""A page reaches someone: real Prometheus evaluates the repository's rules against the local stack and
sends to a real Alertmanager (the committed routes), which posts to a webhook receiver run here.

`DeliveryStageDown` waits `for: 2m` in the committed rule; its copy here waits 2 s, because what is under
test is the path (rule → Prometheus → Alertmanager route → receiver); the `for` is promtool's to check.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import Settings, load_settings
from pipeline.local.alertmanager import AlertmanagerServer, render_config
from pipeline.local.kafka import PROJECT_ROOT, free_port
from pipeline.local.prometheus import PrometheusServer, local_targets
from pipeline.local.stack import LocalStack
from pipeline.topics import TopicCatalog

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "rules"


class Receiver(ThreadingHTTPServer):
    """Collects the JSON bodies Alertmanager posts."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/alerts"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.posts.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()


def quick_rules(directory: Path) -> list[Path]:
    """The repository's rule files, with DeliveryStageDown's `for` shortened (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for path in sorted(RULES.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == "DeliveryStageDown":
                    rule["for"] = "2s"
        target = directory / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(target)
    return out


def test_committed_config_routes_by_severity_and_inhibits_tickets() -> None:
    config = yaml.safe_load(render_config("http://hooks.example/x"))
    routes = {tuple(r["matchers"]): r["receiver"] for r in config["route"]["routes"]}
    assert routes == {('severity="page"',): "page", ('severity="ticket"',): "ticket"}
    assert {r["name"] for r in config["receivers"]} == {"page", "ticket"}
    for receiver in config["receivers"]:
        assert receiver["webhook_configs"][0]["url"] == "http://hooks.example/x"
    inhibit = config["inhibit_rules"][0]
    assert (inhibit["source_matchers"], inhibit["target_matchers"]) == (['severity="page"'], ['severity="ticket"'])


def test_stage_down_page_reaches_the_webhook(
    settings: Settings, topics: TopicCatalog, tmp_path: Path, receiver: Receiver
) -> None:
    stack_settings = load_settings(
        kafka={"bootstrap_servers": settings.kafka.bootstrap_servers, "topic_prefix": settings.kafka.topic_prefix},
        api={"port": free_port()},
        sandbox={"port": free_port()},
        ingest={"port": free_port(), "metrics_port": free_port()},
        sender={"port": free_port()},
        log={"level": "WARNING"},
    )
    stack = LocalStack(stack_settings, stages=("sandbox", "api"), use_sandbox=True, log_dir=tmp_path / "stages")
    alertmanager = AlertmanagerServer(tmp_path / "alertmanager", webhook_url=receiver.url, group_wait="1s",
                                      group_interval="1s")
    jobs = {"delivery-api", "delivery-sandbox"}
    prometheus = PrometheusServer(
        tmp_path / "prometheus", [t for t in local_targets(stack.settings) if t.job in jobs],
        rule_files=quick_rules(tmp_path / "rules"), scrape_interval="1s", alertmanagers=[],
    )
    try:
        stack.start()
        alertmanager.start()
        alertmanager.wait_ready()
        prometheus.alertmanagers = [alertmanager.address]
        prometheus.start()
        prometheus.wait_ready()
        prometheus.wait_targets_up()
        time.sleep(3)
        assert not receiver.posts, "nothing is down yet, so nothing may be sent"

        stack.stop_stage("api")
        deadline = time.monotonic() + 120
        page: dict[str, Any] | None = None
        while time.monotonic() < deadline and page is None:
            page = next((
                p for p in receiver.posts if p["receiver"] == "page" and p["status"] == "firing"
                and any(a["labels"]["alertname"] == "DeliveryStageDown" for a in p["alerts"])
            ), None)
            time.sleep(0.5)
        assert page is not None, f"no page arrived; got {receiver.posts}; see {alertmanager.log_file}"
        (alert,) = [a for a in page["alerts"] if a["labels"]["alertname"] == "DeliveryStageDown"]
        assert alert["labels"]["job"] == "delivery-api"
        assert alert["labels"]["severity"] == "page"
        assert alert["annotations"]["runbook_url"] == "docs/operations.md#deliverystagedown"
        assert all(a["labels"]["job"] != "delivery-sandbox" for p in receiver.posts for a in p["alerts"])
    finally:
        prometheus.stop()
        alertmanager.stop()
        stack.stop()


def test_compose_entrypoint_fills_in_the_webhook_url(tmp_path: Path) -> None:
    """The compose service's shell command (after Compose turns `$$` into `$`) yields a config amtool accepts."""
    compose = yaml.safe_load((PROJECT_ROOT / "deploy" / "docker-compose.yml").read_text())
    service = compose["services"]["alertmanager"]
    (script,) = service["command"]
    script = script.replace("$$", "$").replace("/etc/alertmanager/alertmanager.yml", str(
        PROJECT_ROOT / "deploy" / "alertmanager" / "alertmanager.yml")).replace("/tmp/alertmanager.yml", str(
        tmp_path / "am.yml")).split("&& exec")[0]
    env = {"PATH": "/usr/bin:/bin", "ALERT_WEBHOOK_URL": "http://hooks.example/alerts?x=1"}
    subprocess.run(["/bin/sh", "-c", script], check=True, env=env)
    written = yaml.safe_load((tmp_path / "am.yml").read_text())
    assert {r["webhook_configs"][0]["url"] for r in written["receivers"]} == {"http://hooks.example/alerts?x=1"}
    amtool = shutil.which("amtool")
    assert amtool is not None, "amtool comes with Debian's prometheus-alertmanager (make setup)"
    check = subprocess.run([amtool, "check-config", str(tmp_path / "am.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
