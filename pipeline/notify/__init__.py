"""The notify stage: every outcome, status and customer reply POSTed, signed, to the business's endpoint.

    pipeline notify                      # until SIGTERM/SIGINT; metrics and health on NOTIFY_PORT
    await serve(settings)

Kept free of imports so that `pipeline.config` can load `pipeline.notify.settings` cheaply; the stage
itself lives in `pipeline.notify.service`. docs/callbacks.md describes the contract and the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Settings


async def serve(settings: Settings) -> None:
    from pipeline.notify.service import serve as serve_notify

    await serve_notify(settings)
