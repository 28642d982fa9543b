"""`.env.example` is the whole settings tree, and `cp .env.example .env` gives exactly the defaults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import Profile, load_settings, setting_variables

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / ".env.example"


def example_lines() -> list[tuple[str, str]]:
    pairs = []
    for line in EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            pairs.append((name, value))
    return pairs


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting in the environment, and a project directory of our own as the current directory."""
    for name in [*setting_variables(), *(n for n in os.environ if n.startswith("OTEL_"))]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_env_example_holds_every_setting_of_the_tree() -> None:
    names = [name for name, _ in example_lines()]
    assert len(names) == len(set(names)), "a variable is listed twice"
    settings_names = [n for n in names if not n.startswith("OTEL_")]
    missing = sorted(set(setting_variables()) - set(settings_names))
    unknown = sorted(set(settings_names) - set(setting_variables()))
    assert (missing, unknown) == ([], [])


def test_setting_variables_follow_the_settings_tree() -> None:
    variables = setting_variables()
    assert variables[0] == "PIPELINE_ENV"
    for expected in ("SENDER_EXACTLY_ONCE_OUTCOMES", "KAFKA_SSL_CA", "INGEST_COMPONENTS", "LOG_INSTANCE"):
        assert expected in variables
    assert len(variables) > 100


def test_no_value_carries_an_inline_comment() -> None:
    for name, value in example_lines():
        assert "#" not in value, f"{name}: comments go on their own line"


def test_copied_example_yields_the_documented_defaults(clean_env: Path) -> None:
    defaults = load_settings()
    shutil.copy(EXAMPLE, clean_env / ".env")
    copied = load_settings()
    assert copied.model_dump(exclude={"log": {"instance"}}) == defaults.model_dump(exclude={"log": {"instance"}})
    assert copied.profile is Profile.DEVELOPMENT
    assert copied.kafka.sasl_mechanism is None
    assert copied.whatsapp.app_secret is None
    assert copied.whatsapp.webhook_token is None
    assert [k.key.get_secret_value() for k in copied.api.api_keys()] == ["dev-key"]
    assert (copied.kafka.partitions, copied.kafka.replication_factor) == (3, 1)


def test_a_command_runs_with_the_copied_example(clean_env: Path) -> None:
    shutil.copy(EXAMPLE, clean_env / ".env")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "list"], capture_output=True, text=True, timeout=60,
        cwd=clean_env, env={k: v for k, v in os.environ.items() if k not in setting_variables()},
    )
    assert result.returncode == 0, result.stderr
    assert "send.requests" in result.stdout


def test_production_in_dotenv_is_honoured(clean_env: Path) -> None:
    (clean_env / ".env").write_text("PIPELINE_ENV=production\nAPI_KEYS=\n")
    settings = load_settings()
    assert settings.profile is Profile.PRODUCTION
    assert settings.api.api_keys() == ()  # the development key is not active
    assert settings.kafka.partitions == 12


def test_environment_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("PIPELINE_ENV=production\nKAFKA_PARTITIONS=7\n")
    monkeypatch.setenv("PIPELINE_ENV", "development")
    monkeypatch.setenv("KAFKA_PARTITIONS", "5")
    settings = load_settings()
    assert (settings.profile, settings.kafka.partitions) == (Profile.DEVELOPMENT, 5)


def test_otel_variables_in_dotenv_reach_the_sdk(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Set (empty) first, so that monkeypatch restores the variable's absence afterwards.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "")
    (clean_env / ".env").write_text("OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318\nOTEL_SERVICE_NAME=\n")
    load_settings()
    assert os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert os.environ["OTEL_SERVICE_NAME"] == ""  # empty means unset: nothing exported


def test_empty_values_mean_unset(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_SASL_MECHANISM", "KAFKA_PARTITIONS", "SENDER_RATE_PER_SECOND", "PIPELINE_ENV", "API_KEYS"):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    assert settings.kafka.sasl_mechanism is None
    assert settings.kafka.partitions == 3
    assert settings.sender.rate_per_second == 80.0
    assert settings.profile is Profile.DEVELOPMENT
