"""`SANDBOX_*` settings: the local Graph API stand-in's port, identities, latency, limits and webhooks.

    sandbox = SandboxSettings()                    # from the environment / .env
    sandbox.webhook_url                            # None: no status webhooks are sent

The settings tree (`pipeline.config.Settings.sandbox`) loads it as every other group; it lives here,
beside the sandbox, and imports nothing of the pipeline (the sandbox never imports the client or the
contracts, docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SANDBOX_ACCESS_TOKEN = "sandbox-token"  # noqa: S105 — the sandbox's public, fake token


class SandboxSettings(BaseSettings):
    """The local Graph API stand-in (docs/sandbox.md). Every field but host, port and webhook_concurrency
    can also be changed at run time through `PATCH /_sandbox/config`."""

    model_config = SettingsConfigDict(
        env_prefix="SANDBOX_", env_file=".env", extra="ignore", env_file_encoding="utf-8", env_ignore_empty=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    access_token: SecretStr = SecretStr(SANDBOX_ACCESS_TOKEN)
    app_secret: SecretStr = SecretStr("sandbox-app-secret")
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    waba_id: str = Field(default="102290129340398", pattern=r"^\d{5,20}$")
    display_phone_number: str = Field(default="15550783881", pattern=r"^\d{5,20}$")
    phone_number_ids: list[str] = Field(default_factory=list, description="empty: every id exists")
    # Latency of every Graph API answer: lognormal around the median; 0 answers at once.
    latency_median_seconds: float = Field(default=0.2, ge=0, le=60)
    latency_sigma: float = Field(default=0.4, ge=0, le=3)
    latency_max_seconds: float = Field(default=10.0, ge=0)
    slow_seconds: float = Field(default=5.0, ge=0, description="extra delay of the 'slow' test numbers")
    hang_seconds: float = Field(default=35.0, ge=0, description="how long 'timeout' answers are held")
    # Limits. Meta: 80/s per number (1,000/s when upgraded); ~1 per 6 s per recipient, burst unsure.
    rate_per_second: float = Field(default=80.0, ge=0, description="per business number; 0 = no cap")
    rate_overrides: dict[str, float] = Field(default_factory=dict, description="phone_number_id -> rate")
    throughput_http_status: int = Field(default=400, description="400 or 429: the reference is unsure")
    pair_interval_seconds: float = Field(default=0.0, ge=0, description="0 = no pair limit (lenient default)")
    pair_burst: int = Field(default=3, ge=1)
    media_ttl_seconds: float = Field(default=30 * 86_400.0, gt=0)
    # Status webhooks (none without a URL): delays after acceptance, and Meta's untidiness.
    sent_after_seconds: float = Field(default=0.1, ge=0)
    delivered_after_seconds: float = Field(default=0.5, ge=0)
    read_after_seconds: float = Field(default=2.0, ge=0)
    failed_after_seconds: float = Field(default=0.3, ge=0)
    read_probability: float = Field(default=1.0, ge=0, le=1)
    duplicate_probability: float = Field(default=0.0, ge=0, le=1)
    reorder_probability: float = Field(default=0.0, ge=0, le=1)
    webhook_batch_max: int = Field(default=100, ge=1, le=1000)
    webhook_concurrency: int = Field(default=4, ge=1, le=100)
    webhook_max_attempts: int = Field(default=5, ge=1, le=50)
    webhook_retry_base_seconds: float = Field(default=1.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_queue_limit: int = Field(default=100_000, ge=1)
    send_log_limit: int = Field(default=200_000, ge=0)

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("throughput_http_status")
    @classmethod
    def _400_or_429(cls, value: int) -> int:
        if value not in (400, 429):
            raise ValueError("must be 400 or 429")
        return value
