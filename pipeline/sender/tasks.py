"""The coroutines working on each partition's records, counted so that a revocation can wait for them.

    tasks = PartitionTasks(on_failure=lambda partition, error: ..., clock=time.monotonic)
    tasks.spawn(3, coroutine)              # a task that belongs to partition 3 (-1: to none)
    await tasks.wait_idle({3}, grace=3.0)   # until none of partition 3's tasks runs, or `grace` s passed
    await tasks.cancel()                   # shutdown: cancel them all and wait for them

Contract: every spawned task is counted against its partition until it ends, however it ends; a
task that raised is reported to `on_failure` (its exception never vanishes in the loop). Nothing
here knows what the tasks do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Coroutine
from functools import partial
from typing import Any


class PartitionTasks:
    def __init__(self, on_failure: Callable[[int, BaseException], None], *, clock: Callable[[], float]) -> None:
        self._on_failure = on_failure
        self._now = clock
        self._active: dict[int, int] = {}  # partition -> tasks working on its records
        self._tasks: set[asyncio.Task[None]] = set()
        self._quiet = asyncio.Event()  # set whenever some partition's last task ends
        self._loop: asyncio.AbstractEventLoop | None = None

    def spawn(self, partition: int, coro: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._active[partition] = self._active.get(partition, 0) + 1
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(partial(self._finished, partition))

    async def wait_idle(self, partitions: Collection[int], grace: float) -> None:
        deadline = self._now() + grace
        while any(self._active.get(p) for p in partitions) and (remaining := deadline - self._now()) > 0:
            self._quiet.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), remaining)

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _finished(self, partition: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        left = self._active[partition] - 1
        if left:
            self._active[partition] = left
        else:
            del self._active[partition]
            self._quiet.set()
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            self._on_failure(partition, failure)
