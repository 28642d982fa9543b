"""Child processes that never outlive `pipeline run`, and one `pipeline run` per data directory.

    subprocess.Popen(args, preexec_fn=die_with_parent, start_new_session=True)
    with single_instance(data_dir / "run.pid") as other:   # None, or the PID of a run that holds it
        ...
    descendants(os.getpid())                                # every PID below this one (Linux /proc)

The children live in their own sessions (a terminal's Ctrl-C reaches only `pipeline run`, which stops
them in order), so nothing else would stop them if `pipeline run` itself is killed: `PR_SET_PDEATHSIG`
asks the kernel to send them SIGTERM when their parent dies, however it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` for Popen: SIGTERM this child when the process that started it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@contextlib.contextmanager
def single_instance(pid_file: Path) -> Iterator[int | None]:
    """Hold an exclusive lock on `pid_file` (written with our PID) for the block; yield None when we hold
    it, or the PID written by the holder when another process does. The lock goes with the process, so a
    killed run leaves no stale lock behind."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    handle = pid_file.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            yield int(text) if text.isdigit() else -1
            return
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield None
        finally:
            handle.seek(0)
            handle.truncate()
    finally:
        handle.close()


def descendants(pid: int) -> set[int]:
    """PIDs of every live descendant of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found
