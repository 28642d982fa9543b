"""The store stage: every message, status and reply kept, and findable (docs/store.md).

    pipeline store                      # projects the topics and serves the read API on STORE_PORT
    await serve(settings)               # the same, from Python

Kept light: `pipeline.config` imports `pipeline.store.settings`, which imports this package first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Settings


async def serve(settings: Settings) -> None:
    from pipeline.store.service import serve as serve_store

    await serve_store(settings)


__all__ = ["serve"]
