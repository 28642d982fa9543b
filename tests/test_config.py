"""Settings: every bad variable reported at once, secrets never printed, profiles only change defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.config import Profile, SettingsError, load_settings, require_sender_credentials


def test_every_bad_variable_is_listed_in_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PARTITIONS", "0")
    monkeypatch.setenv("SENDER_RATE_PER_SECOND", "fast")
    monkeypatch.setenv("API_KEYS", "{not json")
    monkeypatch.setenv("WHATSAPP_API_VERSION", "23")
    with pytest.raises(SettingsError) as info:
        load_settings()
    variables = [var for var, _ in info.value.problems]
    assert sorted(variables) == ["API_KEYS", "KAFKA_PARTITIONS", "SENDER_RATE_PER_SECOND", "WHATSAPP_API_VERSION"]
    assert "greater than or equal to 1" in str(info.value)


def test_unknown_profile_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_ENV", "staging")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert info.value.problems[0][0] == "PIPELINE_ENV"


def test_production_changes_only_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = load_settings()
    monkeypatch.setenv("PIPELINE_ENV", "production")
    prod = load_settings()
    assert prod.profile is Profile.PRODUCTION
    assert (dev.kafka.partitions, prod.kafka.partitions) == (3, 12)
    assert prod.api.api_keys() == ()
    monkeypatch.setenv("KAFKA_PARTITIONS", "6")
    assert load_settings().kafka.partitions == 6  # an explicit value still wins


def test_secrets_never_appear_in_dumps_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", "EAAGverysecrettoken123456789")
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "app-secret-value")
    monkeypatch.setenv("API_KEYS", '{"key-that-is-secret": "*"}')
    settings = load_settings()
    text = repr(settings) + settings.model_dump_json() + str(settings.model_dump())
    for secret in ("EAAGverysecrettoken123456789", "app-secret-value", "key-that-is-secret"):
        assert secret not in text
    assert settings.api.api_keys()[0].key.get_secret_value() == "key-that-is-secret"
    monkeypatch.setenv("API_KEYS", '{"short": ["1"]}')
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "short" not in str(info.value)


def test_api_keys_scope_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", '{"key-one-abc": ["111111"], "key-two-abc": "*"}')
    one, two = load_settings().api.api_keys()
    assert one.allows("111111")
    assert not one.allows("222222")
    assert two.allows("222222")


def test_sender_refuses_meta_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHATSAPP_ACCESS_TOKEN", raising=False)
    with pytest.raises(SettingsError) as info:
        require_sender_credentials(load_settings())
    assert info.value.problems[0][0] == "WHATSAPP_ACCESS_TOKEN"
    monkeypatch.setenv("WHATSAPP_API_BASE_URL", "http://127.0.0.1:8090")
    require_sender_credentials(load_settings())  # the sandbox needs no real token


def test_cli_sender_without_token_exits_non_zero_naming_the_variable() -> None:
    env = {"PATH": "/usr/bin:/bin", "WHATSAPP_ACCESS_TOKEN": ""}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "sender"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert "WHATSAPP_ACCESS_TOKEN" in result.stderr


def test_cli_help_lists_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("api", "sender", "ingest", "sandbox", "kafka", "topics", "run", "send", "schemas"):
        assert command in result.stdout


def test_cli_ingest_without_secrets_names_both_variables() -> None:
    env = {"PATH": "/usr/bin:/bin", "WHATSAPP_APP_SECRET": "", "WHATSAPP_WEBHOOK_TOKEN": ""}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "ingest"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert "WHATSAPP_APP_SECRET" in result.stderr
    assert "WHATSAPP_WEBHOOK_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_consumers_only_ingest_needs_no_webhook_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import require_ingest_secrets

    monkeypatch.setenv("WHATSAPP_APP_SECRET", "")
    monkeypatch.setenv("WHATSAPP_WEBHOOK_TOKEN", "")
    for components in ("all", "receiver"):
        monkeypatch.setenv("INGEST_COMPONENTS", components)
        with pytest.raises(SettingsError, match="WHATSAPP_APP_SECRET"):
            require_ingest_secrets(load_settings())
    monkeypatch.setenv("INGEST_COMPONENTS", "consumers")
    require_ingest_secrets(load_settings())  # deploy/k8s keeps both secrets away from the consumers
