"""Process lifecycle shared by the long-running stages.

    stop = stop_on_signals(stop)   # SIGTERM/SIGINT set it; a caller's own event is reused
    try:
        await stop.wait()
    finally:
        release_signals()          # the loop may outlive the stage (tests run several in one)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """Return an event that SIGTERM and SIGINT set (outside the main thread the caller stops us)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def release_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
