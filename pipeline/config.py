"""One settings tree for every stage, read from the environment and an optional `.env`.

    settings = load_settings()          # raises SettingsError listing every bad variable
    settings.kafka.bootstrap_servers    # "127.0.0.1:9092"
    settings.whatsapp.access_token      # SecretStr | None — never printed

Each group reads its own prefix (`KAFKA_`, `WHATSAPP_`, `API_`, `SENDER_`, `INGEST_`, `SANDBOX_`,
`LOG_`, `STORE_`, `NOTIFY_`, `CONSOLE_`). `PIPELINE_ENV=development|production` only changes defaults
(see `_PRODUCTION_DEFAULTS`).
The environment wins over `.env`; an empty value (`KAFKA_SASL_MECHANISM=`) means "unset", i.e. the
default. `PIPELINE_ENV` and the OpenTelemetry SDK's `OTEL_*` variables are honoured from `.env` too
(`load_settings` exports the latter into the process environment, where the SDK reads them).
`setting_variables()` lists every variable of the tree (`.env.example` must hold them all).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.console.settings import ConsoleSettings
from pipeline.notify.settings import NotifySettings
from pipeline.sandbox.settings import SANDBOX_ACCESS_TOKEN, SandboxSettings
from pipeline.store.settings import StoreSettings

META_GRAPH_URL = "https://graph.facebook.com"


class Profile(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


ENV_FILE = ".env"


def dotenv_file(path: str | os.PathLike[str] = ENV_FILE) -> dict[str, str]:
    """The non-empty `KEY=value` lines of `.env` (in the current directory), or nothing without one."""
    from dotenv import dotenv_values

    if not os.path.isfile(path):
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v}


def current_profile() -> Profile:
    raw = os.environ.get("PIPELINE_ENV") or dotenv_file().get("PIPELINE_ENV") or Profile.DEVELOPMENT.value
    try:
        return Profile(raw)
    except ValueError:
        raise SettingsError([("PIPELINE_ENV", f"must be one of development, production; got {raw!r}")]) from None


# Production differs only in these defaults; everything else is the same code path.
_PRODUCTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "KafkaSettings": {"partitions": 12, "replication_factor": 3},
    "ApiSettings": {"keys": SecretStr("{}")},
    "LogSettings": {"level": "INFO"},
}


def export_otel_variables(path: str | os.PathLike[str] = ENV_FILE) -> None:
    """Copy `OTEL_*` lines of `.env` into the process environment (unless already set there), because the
    OpenTelemetry SDK reads only `os.environ`. Child processes inherit them."""
    for name, value in dotenv_file(path).items():
        if name.startswith("OTEL_") and not os.environ.get(name):
            os.environ[name] = value


class _Group(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=ENV_FILE, extra="ignore", env_file_encoding="utf-8", env_ignore_empty=True
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        if current_profile() is Profile.PRODUCTION and isinstance(data, dict):
            for name, value in _PRODUCTION_DEFAULTS.get(cls.__name__, {}).items():
                data.setdefault(name, value)
        return data


class KafkaSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="KAFKA_")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # Defaults are validated too (`validate_default`), so SASL_SSL without a mechanism is reported.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validate_default=True
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(default=None, validate_default=True)
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int = Field(default=3, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=10)
    client_id: str = "whatsapp-delivery"
    # TLS (SSL, SASL_SSL). Each is a file path or the PEM text itself (secrets injected as variables).
    ssl_ca: str | None = Field(default=None, description="CA certificate(s) to trust; empty: the system's CAs")
    ssl_cert: str | None = Field(default=None, description="client certificate (mutual TLS), with KAFKA_SSL_KEY")
    ssl_key: SecretStr | None = Field(
        default=None, validate_default=True, description="the client certificate's private key"
    )
    ssl_key_password: SecretStr | None = Field(default=None, description="if KAFKA_SSL_KEY is encrypted")
    ssl_check_hostname: bool = Field(default=True, description="the broker's certificate must name its host")

    @field_validator("sasl_mechanism", mode="after")
    @classmethod
    def _mechanism_for_sasl(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol", "")
        if protocol.startswith("SASL_") and value is None:
            raise ValueError(f"required with KAFKA_SECURITY_PROTOCOL={protocol}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        if value is not None and not protocol.startswith("SASL_"):
            raise ValueError(f"needs KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT), not {protocol}")
        return value

    @field_validator("sasl_password", mode="after")
    @classmethod
    def _credentials_for_sasl(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("sasl_mechanism") and (value is None or not info.data.get("sasl_username")):
            raise ValueError("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with KAFKA_SASL_MECHANISM")
        return value

    @field_validator("ssl_ca", "ssl_cert", mode="after")
    @classmethod
    def _pem_or_file(cls, value: str | None) -> str | None:
        if value is not None and not value.lstrip().startswith("-----BEGIN") and not os.path.isfile(value):
            raise ValueError(f"no such file {value!r}: give the path of a PEM file or the PEM text itself")
        return value

    @field_validator("ssl_key", mode="after")
    @classmethod
    def _key_with_cert(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if (value is None) != (info.data.get("ssl_cert") is None):
            raise ValueError("KAFKA_SSL_CERT and KAFKA_SSL_KEY go together: set both for mutual TLS, or neither")
        text = value.get_secret_value() if value is not None else ""
        if value is not None and not text.lstrip().startswith("-----BEGIN") and not os.path.isfile(text):
            raise ValueError("not a PEM file path nor PEM text")  # never echo a key
        return value

    def topic(self, base: str) -> str:
        return f"{self.topic_prefix}{base}"

    def client_kwargs(self) -> dict[str, Any]:
        """Connection keyword arguments of every aiokafka producer, consumer and admin client.

        One factory for all (`pipeline.kafka_client.client_options`): TLS and SASL work everywhere or nowhere.
        """
        from pipeline.kafka_client import client_options

        return client_options(self)


class WhatsAppSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="WHATSAPP_")

    api_base_url: str = META_GRAPH_URL
    api_version: str = Field(default="v23.0", pattern=r"^v\d+\.\d+$")
    access_token: SecretStr | None = None
    phone_number_id: str | None = Field(default=None, pattern=r"^\d{5,20}$")
    app_secret: SecretStr | None = None
    webhook_token: SecretStr | None = None
    timeout_seconds: float = Field(default=15.0, gt=0, le=120)

    @field_validator("access_token", "phone_number_id", "app_secret", "webhook_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def targets_meta(self) -> bool:
        return self.api_base_url.rstrip("/") == META_GRAPH_URL


class ApiKey(BaseModel):
    """An API key and the business numbers it may send from (`*` for all)."""

    key: SecretStr
    phone_number_ids: frozenset[str]

    def allows(self, phone_number_id: str) -> bool:
        return "*" in self.phone_number_ids or phone_number_id in self.phone_number_ids


class ApiSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="API_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # JSON object {"<key>": ["<phone_number_id>", ...] | "*"}. A SecretStr as a whole, so that no
    # dump of the settings (logs, errors) can show a key; parsed and checked by `api_keys()`.
    keys: SecretStr = SecretStr('{"dev-key": "*"}')
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_body_bytes: int = Field(default=16 * 1_048_576, ge=1024, description="for /v1/messages:batch")
    max_batch_size: int = Field(default=1000, ge=1, le=10_000)
    # At most the retention of the idempotency topic (7 days): older records are gone from Kafka.
    idempotency_window_seconds: int = Field(default=86_400, ge=1, le=7 * 86_400)
    # Python regular expressions; a text field matching any of them is rejected (422).
    forbidden_patterns: list[str] = Field(default_factory=list)
    # How long a request may wait for Kafka's acknowledgement before the API answers 503.
    publish_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    retry_after_seconds: int = Field(default=5, ge=1, le=3600, description="Retry-After on 503")
    # The producer waits this long to batch concurrent requests into one Kafka request.
    linger_seconds: float = Field(default=0.002, ge=0, le=1)
    # Where the settled idempotency answers live (SQLite; a volume that survives restarts, so a restart
    # reads only the topic's tail). Unset: a temporary file, rebuilt from the window at each start.
    state_dir: Path | None = None
    state_cache_mb: int = Field(default=64, ge=1, le=65_536, description="SQLite page cache for the answers")
    # In front of SQLite (pipeline.api.answers): a Bloom filter sized for this many answers per window
    # (≈ 1.2 bytes each, two generations) and a cache of the most recent answers.
    state_expected_keys: int = Field(default=10_000_000, ge=1_000, le=10_000_000_000)
    state_recent_mb: int = Field(default=32, ge=1, le=65_536, description="memory for recent answers")
    # The store's read API, which GET /v1/messages… and /v1/contacts/… are forwarded to (docs/store.md).
    store_url: str = Field(default="http://127.0.0.1:8082", pattern=r"^https?://")

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, value: SecretStr) -> SecretStr:
        _parse_api_keys(value.get_secret_value())
        return value

    @field_validator("forbidden_patterns")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        for index, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"entry {index + 1} is not a valid regular expression: {exc}") from None
        return value

    def api_keys(self) -> tuple[ApiKey, ...]:
        return _parse_api_keys(self.keys.get_secret_value())


def _parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    rule = 'must be a JSON object {"<key>": ["<phone_number_id>", ...] or "*"}'
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{rule}: {exc.msg} at character {exc.pos}") from None
    if not isinstance(parsed, dict):
        raise ValueError(rule)
    keys = []
    for index, (key, numbers) in enumerate(parsed.items()):
        if numbers != "*" and not (isinstance(numbers, list) and all(isinstance(n, str) for n in numbers)):
            raise ValueError(f"{rule}; entry {index + 1} is neither")
        if len(key) < 8 and key != "dev-key":
            raise ValueError(f"entry {index + 1}: keys must be at least 8 characters")
        keys.append(ApiKey(key=SecretStr(key), phone_number_ids=frozenset(["*"] if numbers == "*" else numbers)))
    return tuple(keys)


class SenderSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="SENDER_")

    host: str = "127.0.0.1"
    port: int = Field(default=9101, ge=0, le=65535, description="metrics and health")
    group_id: str = "delivery-sender"
    rate_per_second: float = Field(default=80.0, gt=0, le=10_000)
    max_in_flight: int = Field(default=300, ge=1, le=5000)
    max_buffered: int = Field(default=20_000, ge=1)
    pair_interval_seconds: float = Field(default=6.0, ge=0)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=60.0, gt=0)
    breaker_failure_ratio: float = Field(
        default=0.5, gt=0, le=1, description="failure share of the window that makes the breaker probe at once"
    )
    breaker_min_calls: int = Field(default=20, ge=1, description="answers in the window before the ratio counts")
    breaker_min_recipients: int = Field(default=5, ge=1, description="distinct failing recipients the ratio needs")
    breaker_window_seconds: float = Field(default=10.0, gt=0, description="the breaker's sliding window")
    blocked_probe_seconds: float = Field(
        default=300.0, gt=0, description="after an auth/policy error, how often one request probes the number"
    )
    rate_window_guard_seconds: float = Field(
        default=0.025, ge=0, le=1.0,
        description="sends are spaced so that no window of 1 s + guard holds more than the rate: absorbs jitter",
    )
    rebalance_grace_seconds: float = Field(default=3.0, ge=0, description="in-flight calls of revoked partitions")
    exactly_once_outcomes: bool = Field(
        default=True, description="outcomes and offsets in one Kafka transaction (false: brokers without them)"
    )
    transaction_timeout_seconds: float = Field(default=15.0, ge=1, le=900)
    session_timeout_seconds: float = Field(
        default=10.0, ge=1, le=300, description="how long the group waits for a silent (crashed) member"
    )
    retry_max_attempts: int = Field(default=8, ge=1)
    retry_base_delay_seconds: float = Field(default=0.5, gt=0)
    retry_max_delay_seconds: float = Field(default=300.0, gt=0)
    retry_ambiguous: bool = Field(
        default=False, description="retry a call that may have sent at once, without waiting for its status"
    )
    ambiguous_window_seconds: float = Field(
        default=60.0, gt=0, le=3600,
        description="how long a possibly-sent request waits for a status with its request id before a retry",
    )
    commit_interval_seconds: float = Field(default=1.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)


class IngestSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="INGEST_")

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535, description="webhook receiver")
    metrics_port: int = Field(default=9102, ge=0, le=65535, description="consumer metrics and health")
    group_id: str = "delivery-ingest"
    max_body_bytes: int = Field(default=3 * 1024 * 1024, ge=1024)
    components: Literal["all", "receiver", "consumers"] = Field(
        default="all",
        description="all: receiver and consumers in one process on `port`; consumers: ops on `metrics_port`",
    )
    produce_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="how long a webhook POST waits for Kafka before answering 503"
    )
    batch_max_records: int = Field(default=500, ge=1, le=10_000, description="records per consumer batch")
    linger_seconds: float = Field(default=0.005, ge=0, le=1, description="consumers' producer batching delay")
    commit_interval_seconds: float = Field(
        default=0.5, gt=0, le=60, description="consumers commit acknowledged offsets at most this often"
    )
    session_timeout_seconds: float = Field(default=10.0, ge=6, le=300)
    state_retention_days: float = Field(
        default=8.0, gt=0, description="forget a message's dedupe state this long after its last status"
    )
    # Where each owned partition's dedupe state lives (SQLite, one file per partition; a volume that
    # survives restarts, so a restart reads only the status.state tail). Unset: a temporary file per
    # assignment, rebuilt from the whole changelog each time (docs/ingest.md).
    state_dir: Path | None = None
    state_cache_mb: int = Field(
        default=32, ge=1, le=65_536,
        description="per owned partition: SQLite's page cache, and as much again for recent states",
    )


class LogSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    instance: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


class Settings(BaseModel):
    profile: Profile
    kafka: KafkaSettings
    whatsapp: WhatsAppSettings
    api: ApiSettings
    sender: SenderSettings
    ingest: IngestSettings
    sandbox: SandboxSettings
    store: StoreSettings
    log: LogSettings
    notify: NotifySettings
    console: ConsoleSettings


class SettingsError(Exception):
    """Every bad variable at once, as `(VARIABLE, why)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {var}: {why}" for var, why in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


_GROUPS: dict[str, type[BaseSettings]] = {
    "kafka": KafkaSettings,
    "whatsapp": WhatsAppSettings,
    "api": ApiSettings,
    "sender": SenderSettings,
    "ingest": IngestSettings,
    "sandbox": SandboxSettings,
    "store": StoreSettings,
    "log": LogSettings,
    "notify": NotifySettings,
    "console": ConsoleSettings,
}


def setting_variables() -> list[str]:
    """Every environment variable of the settings tree, `PIPELINE_ENV` first, in declaration order.

    Derived from `Settings` itself, so a group added there (in its own module) is listed with no edit here.
    """
    names = ["PIPELINE_ENV"]
    for field in Settings.model_fields.values():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseSettings):
            prefix = str(group.model_config.get("env_prefix", ""))
            names.extend(f"{prefix}{name}".upper() for name in group.model_fields)
    return names


def load_settings(**overrides: dict[str, Any]) -> Settings:
    """Read every group; collect all problems before failing so the operator fixes them in one go.

    `overrides` maps a group name to field values that win over the environment (used by the CLI
    for `--host/--port` and by tests).
    """
    problems: list[tuple[str, str]] = []
    profile = Profile.DEVELOPMENT
    export_otel_variables()
    try:
        profile = current_profile()
    except SettingsError as exc:
        problems.extend(exc.problems)
    groups: dict[str, Any] = {}
    for name, group in _GROUPS.items():
        try:
            groups[name] = group(**overrides.get(name, {}))
        except ValidationError as exc:
            prefix = group.model_config.get("env_prefix", "")
            for err in exc.errors(include_url=False, include_input=False):
                field = str(err["loc"][0]) if err["loc"] else ""
                problems.append((f"{prefix}{field}".upper(), err["msg"]))
    if problems:
        raise SettingsError(problems)
    return Settings(profile=profile, **groups)


def settings_for_command(**overrides: dict[str, Any]) -> Settings:
    """`load_settings` for a command line: `None` overrides (options not given) are dropped, and bad
    settings print their problems to stderr and exit 2 instead of raising a traceback."""
    try:
        return load_settings(**{k: {f: v for f, v in o.items() if v is not None} for k, o in overrides.items()})
    except SettingsError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def require_sender_credentials(settings: Settings) -> None:
    """The sender must not start against Meta without a token (it would fail every send)."""
    if settings.whatsapp.targets_meta and settings.whatsapp.access_token is None:
        raise SettingsError(
            [
                (
                    "WHATSAPP_ACCESS_TOKEN",
                    "required when WHATSAPP_API_BASE_URL points at Meta's Graph API; "
                    "set it, or point WHATSAPP_API_BASE_URL at the sandbox (`pipeline run` does this)",
                )
            ]
        )


def require_ingest_secrets(settings: Settings) -> None:
    """The receiver cannot verify webhooks without the app secret, nor the subscription without the token.

    The consumers never see a webhook's signature, so `INGEST_COMPONENTS=consumers` needs neither.
    """
    if settings.ingest.components == "consumers":
        return
    problems = []
    consumers_only = "or run this process with INGEST_COMPONENTS=consumers (no webhook receiver)"
    if settings.whatsapp.app_secret is None:
        problems.append((
            "WHATSAPP_APP_SECRET",
            "required to verify X-Hub-Signature-256 on Meta's webhooks; set it to the App Secret of your Meta "
            f"app (App settings > Basic), {consumers_only}",
        ))
    if settings.whatsapp.webhook_token is None:
        problems.append((
            "WHATSAPP_WEBHOOK_TOKEN",
            "required to answer Meta's webhook verification (hub.verify_token); set it to the Verify token you "
            f"entered in the app's WhatsApp > Configuration, {consumers_only}",
        ))
    if problems:
        raise SettingsError(problems)


def require_production_api_keys(settings: Settings) -> None:
    """In production an API without keys would start, report ready and answer 401 to every caller."""
    if settings.profile is Profile.PRODUCTION and not settings.api.api_keys():
        raise SettingsError([(
            "API_KEYS",
            "at least one API key is required in production (PIPELINE_ENV=production has no development key); "
            'set API_KEYS=\'{"<key of 8+ characters>": "*"}\' or list the phone_number_ids each key may send from',
        )])


__all__ = [
    "SANDBOX_ACCESS_TOKEN",
    "ApiKey",
    "ApiSettings",
    "IngestSettings",
    "KafkaSettings",
    "LogSettings",
    "Profile",
    "SandboxSettings",
    "SenderSettings",
    "Settings",
    "SettingsError",
    "WhatsAppSettings",
    "load_settings",
    "require_ingest_secrets",
    "require_production_api_keys",
    "require_sender_credentials",
    "settings_for_command",
]
