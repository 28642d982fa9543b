"""The console's settings (prefix `CONSOLE_`).

    settings.console.trace_url     # "http://jaeger:16686/trace/{trace_id}" or None (no trace links)
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", env_file=".env", extra="ignore", env_file_encoding="utf-8")

    trace_url: str | None = Field(
        default=None, description="link template for a message's trace, e.g. http://jaeger:16686/trace/{trace_id}"
    )

    @field_validator("trace_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("trace_url")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            if "{trace_id}" not in value:
                raise ValueError("must contain {trace_id}, e.g. http://jaeger:16686/trace/{trace_id}")
            if not value.startswith(("http://", "https://")):
                raise ValueError("must be an http:// or https:// URL")
        return value
