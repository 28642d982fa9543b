"""`pipeline run` as a newcomer uses it: `cp .env.example .env`, run, send one message; then the terminal
goes away (SIGHUP) and nothing is left running. Also: one run per data directory, dead stages restarted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from pipeline.config import setting_variables
from pipeline.local.kafka import free_port
from pipeline.local.process import descendants

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_env_example_run_send_then_sighup_leaves_nothing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / ".env.example", project / ".env")
    ports = {name: free_port() for name in ("API_PORT", "INGEST_PORT", "INGEST_METRICS_PORT", "SENDER_PORT",
                                            "SANDBOX_PORT")}
    env = {k: v for k, v in os.environ.items() if k not in setting_variables()}
    # The environment wins over .env: only the ports move, so parallel test runs do not collide.
    env.update({k: str(v) for k, v in ports.items()})
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"  # nothing there: `pipeline run` starts a broker
    data = tmp_path / "data"
    command = [sys.executable, "-m", "pipeline", "run", "--data-dir", str(data), "--no-monitoring"]
    out, err = (tmp_path / "run.out").open("wb"), (tmp_path / "run.err").open("wb")
    run = subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=err)
    api = f"http://127.0.0.1:{ports['API_PORT']}"
    try:
        wait_until(lambda: _ready(f"{api}/readyz") or run.poll() is not None, 240, "the API is ready")
        assert run.poll() is None, (tmp_path / "run.err").read_text()

        sent = subprocess.run(
            [sys.executable, "-m", "pipeline", "send", "--to", "+16505551234", "--text", "hello", "--api-url", api],
            cwd=project, env=env, capture_output=True, text=True, timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("accepted req_")

        second = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip().count("\n") == 0, second.stderr  # one line
        assert f"already running (pid {run.pid}" in second.stderr

        children = descendants(run.pid)
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children if _alive(pid)]
        assert any(b"kafka.Kafka" in c for c in cmdlines), "the broker is a child of `pipeline run`"
        assert sum(b"pipeline" in c for c in cmdlines) >= 4

        # A normal start logs no error (the stages' own files; the terminal shows none either).
        for log in sorted((data / "logs").glob("*.log")):
            errors_logged = [line for line in log.read_text().splitlines() if '"level":"error"' in line]
            assert errors_logged == [], (log.name, errors_logged[:3])

        # A stage that dies is restarted, not the whole stack stopped.
        sender = next(pid for pid in children if b"sender" in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.kill(sender, signal.SIGKILL)
        wait_until(lambda: b"sender restarted" in (tmp_path / "run.err").read_bytes(), 120, "the sender restarts")
        assert run.poll() is None
        children |= descendants(run.pid)

        run.send_signal(signal.SIGHUP)  # the terminal went away
        run.wait(timeout=120)
        wait_until(lambda: not any(_alive(pid) for pid in children), 60, "every child is gone")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        out.close()
        err.close()
    errors = (tmp_path / "run.err").read_text()
    assert "Traceback" not in errors
    assert '"level":"error"' not in errors + (tmp_path / "run.out").read_text()  # the stages log to files
    assert (data / "logs" / "api.log").stat().st_size > 0


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: even SIGKILL of the parent (no chance to clean up) takes the children along."""
    script = (
        "import subprocess, sys, time\n"
        "from pipeline.local.process import die_with_parent\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=die_with_parent,"
        " start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    wait_until(lambda: not _alive(child), 30, "the child follows its parent")
