"""The store stage's settings (prefix `STORE_`), one group of the pipeline's settings tree.

    settings.store.database_url.get_secret_value()   # "sqlite:///…/store.db" or "postgresql://…"
    settings.store.retention_days                    # 90
    sqlite_url(Path("/data/store.db"))               # "sqlite:////data/store.db"

The database URL is a SecretStr: it may hold a password, so no dump of the settings shows it.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SQLITE_SCHEME = "sqlite:///"


def sqlite_url(path: Path | str) -> str:
    """The database URL of the SQLite file at `path` (relative or absolute)."""
    return f"{SQLITE_SCHEME}{path}"


DEFAULT_DATABASE_URL = sqlite_url(".cache/store/store.db")


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STORE_", env_file=".env", extra="ignore", env_file_encoding="utf-8")

    host: str = "127.0.0.1"
    port: int = Field(default=8082, ge=0, le=65535, description="read API, metrics and health")
    database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL),
        description="sqlite:///<path> (embedded, the default) or postgresql://user:password@host:port/db",
    )
    group_id: str = "delivery-store"
    batch_size: int = Field(default=2000, ge=1, le=50_000, description="records per projection batch")
    retention_days: float = Field(default=90.0, gt=0, description="messages older than this are deleted")
    retention_interval_seconds: float = Field(default=300.0, gt=0, description="how often the retention pass runs")
    encryption_key: SecretStr | None = Field(
        default=None, description="base64 of a 16/24/32-byte AES-GCM key: message text encrypted at rest"
    )
    pool_size: int = Field(default=4, ge=1, le=100, description="PostgreSQL connections of the read API")
    session_timeout_seconds: float = Field(default=10.0, ge=6, le=300)

    @field_validator("encryption_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("encryption_key")
    @classmethod
    def _aes_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                raw = base64.b64decode(value.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be base64 (e.g. `openssl rand -base64 32`)") from None
            if len(raw) not in (16, 24, 32):
                raise ValueError(f"must decode to 16, 24 or 32 bytes for AES-GCM; got {len(raw)}")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith((SQLITE_SCHEME, "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @property
    def backend(self) -> str:
        return "sqlite" if self.database_url.get_secret_value().startswith("sqlite") else "postgresql"

    def encryption_key_bytes(self) -> bytes | None:
        return None if self.encryption_key is None else base64.b64decode(self.encryption_key.get_secret_value())
