"""Readiness that tells the truth: partitions assigned *and* the broker answering.

    check = BrokerCheck(producer.client)          # any aiokafka client
    await check.reachable()                      # True while a metadata request succeeds (cached 1 s)

A sender whose broker is gone can neither commit nor publish outcomes; its /readyz must say so
instead of staying 200 on partitions assigned before the broker went away.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from aiokafka.errors import KafkaError


class MetadataClient(Protocol):
    async def fetch_all_metadata(self) -> Any: ...


class BrokerCheck:
    def __init__(self, client: MetadataClient, *, timeout: float = 2.0, cache_seconds: float = 1.0) -> None:
        self._client = client
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._checked_at = -float("inf")
        self._ok = False
        self._lock = asyncio.Lock()

    async def reachable(self) -> bool:
        async with self._lock:  # concurrent /readyz calls share one request
            if time.monotonic() - self._checked_at < self._cache_seconds:
                return self._ok
            try:
                await asyncio.wait_for(self._client.fetch_all_metadata(), self._timeout)
                self._ok = True
            except (KafkaError, OSError, TimeoutError):
                self._ok = False
            self._checked_at = time.monotonic()
            return self._ok
