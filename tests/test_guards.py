"""Unsafe starts are refused, naming the variable and the fix; safe partial deployments are not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline.config import SettingsError, load_settings, require_ingest_secrets, require_production_api_keys
from pipeline.local.kafka import free_port

BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}


def pipeline_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
        env={**BASE_ENV, **env}, cwd=cwd, timeout=60,
    )


def test_production_api_without_keys_refuses_to_start(tmp_path: Path) -> None:
    result = pipeline_cli("api", env={"PIPELINE_ENV": "production", "API_KEYS": ""}, cwd=tmp_path)
    assert result.returncode == 2
    assert "API_KEYS" in result.stderr
    assert "set API_KEYS=" in result.stderr  # the fix, not only the problem


def test_production_keys_check_passes_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_ENV", "production")
    with pytest.raises(SettingsError):
        require_production_api_keys(load_settings())
    monkeypatch.setenv("API_KEYS", '{"a-long-production-key": "*"}')
    require_production_api_keys(load_settings())
    monkeypatch.setenv("PIPELINE_ENV", "development")
    monkeypatch.setenv("API_KEYS", "{}")
    require_production_api_keys(load_settings())  # development: only production is guarded


@pytest.mark.parametrize("components", ["all", "receiver"])
def test_receiver_refuses_without_webhook_secrets(components: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHATSAPP_APP_SECRET", raising=False)
    monkeypatch.delenv("WHATSAPP_WEBHOOK_TOKEN", raising=False)
    monkeypatch.setenv("INGEST_COMPONENTS", components)
    with pytest.raises(SettingsError) as info:
        require_ingest_secrets(load_settings())
    assert [var for var, _ in info.value.problems] == ["WHATSAPP_APP_SECRET", "WHATSAPP_WEBHOOK_TOKEN"]
    for _, why in info.value.problems:
        assert "set it" in why
        assert "INGEST_COMPONENTS=consumers" in why


def test_cli_receiver_without_secrets_exits_naming_both(tmp_path: Path) -> None:
    result = pipeline_cli("ingest", env={"INGEST_COMPONENTS": "receiver"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "WHATSAPP_APP_SECRET" in result.stderr
    assert "WHATSAPP_WEBHOOK_TOKEN" in result.stderr


@pytest.mark.kafka
def test_consumers_only_ingest_starts_without_webhook_secrets(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **BASE_ENV, "INGEST_COMPONENTS": "consumers", "INGEST_METRICS_PORT": str(port),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC_PREFIX": f"guard{port}.",
        "INGEST_GROUP_ID": f"guard-{port}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "ingest"], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.3)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert ready
    finally:
        process.terminate()
        process.wait(timeout=30)
