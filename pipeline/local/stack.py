"""The pipeline's stages as child processes, exactly as `pipeline run` starts them.

    stack = LocalStack(settings)          # ports, topics and broker from the settings
    stack.start()                         # sandbox (without a real token), ingest, sender, api
    stack.urls["api"]                     # "http://127.0.0.1:8080"
    stack.stop()                          # SIGTERM in reverse order, SIGKILL after the grace

Used by `pipeline run` and by the end-to-end tests, so the tests exercise what users run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, SecretStr

from pipeline.config import Profile, Settings
from pipeline.local.process import die_with_parent

STAGE_ORDER = ("sandbox", "ingest", "sender", "store", "notify", "api")
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"  # noqa: S105 — a public, fake token for local runs
SANDBOX_PHONE_NUMBER_ID = "106540352242922"


class StackError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    url: str


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the environment variable that sets it, so a child sees the same tree."""
    env: dict[str, str] = {"PIPELINE_ENV": settings.profile.value}
    for group_name in ("kafka", "whatsapp", "api", "sender", "ingest", "sandbox", "store", "log", "notify", "console"):
        group: BaseModel = getattr(settings, group_name)
        prefix = str(group.model_config.get("env_prefix", ""))
        for field, value in group:
            if value is None or (group_name, field) == ("log", "instance"):  # each process names itself
                continue
            env[f"{prefix}{field}".upper()] = _env_value(value)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict | tuple | frozenset | set):
        return json.dumps(sorted(value) if isinstance(value, frozenset | set) else value)
    return str(value)


def with_sandbox(settings: Settings) -> Settings:
    """Aim the sender at the local sandbox and the sandbox's webhooks at the local ingest."""
    sandbox_url = f"http://{_loopback(settings.sandbox.host)}:{settings.sandbox.port}"
    webhook_url = f"http://{_loopback(settings.ingest.host)}:{settings.ingest.port}/webhooks/whatsapp"
    whatsapp = settings.whatsapp.model_copy(
        update={
            "api_base_url": sandbox_url,
            "access_token": settings.sandbox.access_token,
            "app_secret": settings.whatsapp.app_secret or settings.sandbox.app_secret,
            "webhook_token": settings.whatsapp.webhook_token or SecretStr(SANDBOX_VERIFY_TOKEN),
            "phone_number_id": settings.whatsapp.phone_number_id or SANDBOX_PHONE_NUMBER_ID,
        }
    )
    app_secret = whatsapp.app_secret or settings.sandbox.app_secret
    sandbox = settings.sandbox.model_copy(
        update={"webhook_url": settings.sandbox.webhook_url or webhook_url, "app_secret": app_secret}
    )
    return settings.model_copy(update={"whatsapp": whatsapp, "sandbox": sandbox})


def with_demo_receiver(settings: Settings) -> Settings:
    """No subscription in development: every number's callbacks to notify's printing demo receiver."""
    if settings.profile is not Profile.DEVELOPMENT or settings.notify.subscription_list():
        return settings
    from pipeline.notify.demo import demo_subscription

    notify = settings.notify.model_copy(update={
        "subscriptions": SecretStr(demo_subscription(settings.notify.demo_receiver_port)), "demo_receiver": True,
    })
    return settings.model_copy(update={"notify": notify})


def with_store(settings: Settings) -> Settings:
    """Aim the API's forwarded read routes at the local store."""
    store_url = f"http://{_loopback(settings.store.host)}:{settings.store.port}"
    return settings.model_copy(update={"api": settings.api.model_copy(update={"store_url": store_url})})


def stage_exists(name: str) -> bool:
    # An empty folder imports as a namespace package, so look for a real package.
    spec = importlib.util.find_spec(f"pipeline.{name}")
    return spec is not None and spec.origin is not None and Path(spec.origin).name == "__init__.py"


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((_loopback(host), port)) == 0


class LocalStack:
    """Start the stages in dependency order; stop them in reverse."""

    def __init__(
        self,
        settings: Settings,
        *,
        stages: Sequence[str] = STAGE_ORDER,
        use_sandbox: bool | None = None,
        extra_env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.use_sandbox = settings.whatsapp.access_token is None if use_sandbox is None else use_sandbox
        self.settings = with_store(with_sandbox(settings) if self.use_sandbox else settings)
        self.settings = with_demo_receiver(self.settings)
        self.stages = [s for s in stages if (self.use_sandbox or s != "sandbox") and stage_exists(s)]
        self.env = {**os.environ, **settings_env(self.settings), **(extra_env or {})}
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._logs: list[IO[bytes]] = []

    def _address(self, stage: str) -> tuple[str, int]:
        group = getattr(self.settings, stage)
        return group.host, group.port

    @property
    def urls(self) -> dict[str, str]:
        return {c.name: c.url for c in self.children}

    def start(self, timeout: float = 60.0) -> None:
        for stage in self.stages:
            self.start_stage(stage, timeout)

    def start_stage(self, stage: str, timeout: float = 60.0) -> Child:
        host, port = self._address(stage)
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{stage}.log").open("ab")
            self._logs.append(output)
        process = subprocess.Popen(  # noqa: S603 — our own interpreter and module
            [sys.executable, "-m", "pipeline", stage],
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,  # stopped in order by us; a terminal's Ctrl-C must not hit them first
            preexec_fn=die_with_parent,  # and gone with us, however we die
        )
        child = Child(stage, process, f"http://{_loopback(host)}:{port}")
        self.children.append(child)
        deadline = time.monotonic() + timeout
        while not _accepts(host, port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"{stage} did not start (exit code {process.poll()})")
            time.sleep(0.1)
        return child

    def dead(self) -> Child | None:
        """The first child that exited on its own, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop_stage(self, stage: str, sig: int = signal.SIGTERM, grace: float = 20.0) -> int | None:
        child = next(c for c in self.children if c.name == stage)
        self.children.remove(child)
        _terminate([child], sig, grace)
        return child.process.returncode

    def stop(self, grace: float = 20.0) -> None:
        children, self.children = self.children, []
        _terminate(list(reversed(children)), signal.SIGTERM, grace)
        for log in self._logs:
            log.close()
        self._logs.clear()


def _terminate(children: Sequence[Child], sig: int, grace: float) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(sig)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
