"""`NOTIFY_*` settings: where callbacks go, how hard to try, and how safe an endpoint must be.

    notify = NotifySettings()                      # from the environment / .env
    notify.subscription_list()                     # (Subscription(phone_number_id="*", url=…), …)

`NOTIFY_SUBSCRIPTIONS` is a JSON list held as a secret as a whole (it carries the signing secrets):

    [{"phone_number_id": "106540352242922", "url": "https://hooks.example.com/wa",
      "secret": "whsec_…", "events": ["send.result", "status.*", "inbound.message"]},
     {"phone_number_id": "*", "url": "https://ops.example.com/all", "secret": "…"}]

`events` defaults to every type; `status.*` means every status. Seconds are the unit of every duration.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ALL_NUMBERS = "*"
# CallbackEventType's values (tests/notify/test_urls.py keeps them equal). Spelled out because every
# stage loads these settings through pipeline.config, the sandbox included, which must never import
# pipeline.contracts (docs/architecture.md).
EVENT_TYPES = frozenset({
    "send.result", "status.sent", "status.delivered", "status.read", "status.played", "status.failed",
    "inbound.message",
})


class Subscription(BaseModel):
    """One endpoint subscribed to one business number's events (or every number's, `*`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phone_number_id: str = Field(pattern=r"^(\*|\d{5,20})$")
    url: str = Field(min_length=1, max_length=2048)
    secret: SecretStr = Field(description="HMAC-SHA256 key of X-Delivery-Signature; at least 16 characters")
    events: frozenset[str] = Field(default=frozenset({"*"}))

    @field_validator("url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials (user:password@); sign with the secret instead")
        return value

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(e for e in value if e not in EVENT_TYPES and e not in ("*", "status.*"))
        if unknown:
            known = ", ".join(["*", "status.*", *sorted(EVENT_TYPES)])
            raise ValueError(f"unknown event type(s) {', '.join(unknown)}; known: {known}")
        return value

    @property
    def host(self) -> str:
        """The endpoint's host: bounded (it comes from settings), so it may label metrics."""
        return urlsplit(self.url).hostname or ""

    @property
    def name(self) -> str:
        """How logs, errors and dead letters name it: number and host, never the secret or the path."""
        return f"{self.phone_number_id}->{self.host}"

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events or (
            event_type.startswith("status.") and "status.*" in self.events
        )


class NotifySettings(BaseSettings):
    # pipeline.config's groups share this configuration; imported from there, not the other way round.
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", env_file=".env", extra="ignore", env_file_encoding="utf-8")

    host: str = "127.0.0.1"
    port: int = Field(default=9103, ge=0, le=65535, description="metrics and health")
    group_id: str = "delivery-notify"
    subscriptions: SecretStr = Field(default=SecretStr("[]"), description="JSON list of subscriptions (module doc)")
    max_attempts: int = Field(default=15, ge=1, le=1000)
    max_age_seconds: float = Field(default=86_400.0, gt=0, description="dead-letter an event older than this")
    retry_base_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0, description="longest backoff; a Retry-After may ask more")
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open an endpoint's breaker")
    breaker_reset_seconds: float = Field(default=30.0, gt=0, description="how long it stays open before a probe")
    concurrency_per_endpoint: int = Field(default=64, ge=1, le=4096)
    endpoint_queue_limit: int = Field(default=50_000, ge=1, description="events waiting per endpoint")
    max_buffered: int = Field(default=200_000, ge=1, description="events held in memory in all")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    read_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    max_response_bytes: int = Field(default=4096, ge=0, le=1_048_576, description="how much of an answer is read")
    order_hold_seconds: float = Field(
        default=2.0, ge=0, le=60,
        description="a status may wait this long for its request's send result, so the result comes first",
    )
    allow_private_networks: bool = False
    commit_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    batch_max_records: int = Field(default=1000, ge=1, le=10_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_seconds: float = Field(default=10.0, ge=6, le=300)
    demo_receiver: bool = Field(
        default=False, description="`pipeline run` without subscriptions: print callbacks on a local receiver"
    )
    demo_receiver_port: int = Field(default=9104, ge=0, le=65535)

    @field_validator("subscriptions")
    @classmethod
    def _parse(cls, value: SecretStr) -> SecretStr:
        parse_subscriptions(value.get_secret_value())
        return value

    def subscription_list(self) -> tuple[Subscription, ...]:
        return parse_subscriptions(self.subscriptions.get_secret_value())


def parse_subscriptions(raw: str) -> tuple[Subscription, ...]:
    """The subscriptions in `raw`; a ValueError names the entry, the field and the rule (never a secret)."""
    rule = 'must be a JSON list of {"phone_number_id", "url", "secret", "events"} objects'
    try:
        parsed: Any = json.loads(raw) if raw.strip() else []
    except json.JSONDecodeError as exc:
        raise ValueError(f"{rule}: {exc.msg} at character {exc.pos}") from None
    if not isinstance(parsed, list):
        raise ValueError(rule)
    subscriptions = []
    for index, item in enumerate(parsed, start=1):
        try:
            subscriptions.append(Subscription.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(entry)'}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False)
            )
            raise ValueError(f"entry {index}: {problems}") from None
    return tuple(subscriptions)
