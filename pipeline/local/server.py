"""One launcher for the HTTP servers `pipeline run` and the tests start from Debian packages (Prometheus,
Alertmanager): a subclass names its binary and writes its config and command line; this runs it.

    class AlertmanagerServer(ServerProcess):
        name = "alertmanager"                               # its log: workdir / "alertmanager.log"
        binaries = ("prometheus-alertmanager", "alertmanager")  # on PATH, in order; [0] is the package
        error = AlertmanagerError
        def command(self, binary: str) -> list[str]: ...    # writes its config under self.workdir

    server = AlertmanagerServer(workdir, port=preferred_port(9093))   # port=0 (the default): a free one
    server.start(); server.wait_ready()        # or `with AlertmanagerServer(...) as server:`
    server.url, server.address, server.log_file
    server.stop()                              # SIGTERM, then SIGKILL after the timeout
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

import httpx

from pipeline.local.kafka import free_port
from pipeline.local.process import die_with_parent


class ServerError(RuntimeError):
    pass


def preferred_port(port: int) -> int:
    """`port` if nothing listens on it, otherwise a free one (a second run, or something else's server)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
        return port


@dataclass
class ServerProcess:
    """A server process on 127.0.0.1 with its config, state and log under `workdir`."""

    name: ClassVar[str]
    binaries: ClassVar[tuple[str, ...]]
    error: ClassVar[type[ServerError]] = ServerError

    workdir: Path
    port: int = field(default=0, kw_only=True)
    process: subprocess.Popen[bytes] | None = field(default=None, kw_only=True, repr=False)

    @classmethod
    def binary(cls) -> str | None:
        return next(filter(None, map(shutil.which, cls.binaries)), None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def command(self, binary: str) -> list[str]:
        """The command line, listening on `self.address`; writes what it needs under `self.workdir`."""
        raise NotImplementedError

    def start(self) -> None:
        binary = self.binary()
        if binary is None:
            package = self.binaries[0]
            raise self.error(f"`{package}` is not installed (apt-get install {package}; `make setup` does it)")
        if not self.port:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = self.command(binary)
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 — fixed argument list, no shell
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,  # the caller stops it in order; Ctrl-C must not hit it first
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._poll_until(lambda: self._get("/-/ready").status_code == 200, timeout, "become ready")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=10.0)

    def _poll_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise self.error(f"{self.name} exited with {self.process.returncode}; see {self.log_file}")
            try:
                if check():
                    return
            except (httpx.HTTPError, ServerError, KeyError) as exc:
                last_error = f" (last error: {exc})"
            time.sleep(0.2)
        raise self.error(f"{self.name} did not {what} within {timeout:.0f}s{last_error}; see {self.log_file}")
