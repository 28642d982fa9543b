"""A local stand-in for Meta's WhatsApp Cloud API (Graph API): sends, media, limits, signed webhooks.

    app = create_app(settings.sandbox)      # aiohttp app, for in-process use
    await serve(settings)                   # `pipeline sandbox`
    async with running_sandbox(rate_per_second=1000) as sandbox:   # pipeline.sandbox.testing
        ...

It is an independent implementation of Meta's side: it never imports the client (`pipeline.whatsapp`)
or the contracts, so a misreading of Meta's formats shared by both cannot hide. docs/sandbox.md has
the test numbers, the control endpoints and the limits of its fidelity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.sandbox.app import create_app, serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not here: pipeline.config loads pipeline.sandbox.settings, and the app
    # imports pipeline.config, so an eager import would be circular.
    if name in __all__:
        from pipeline.sandbox import app

        return getattr(app, name)
    raise AttributeError(f"module 'pipeline.sandbox' has no attribute {name!r}")
