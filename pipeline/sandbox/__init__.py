"""A local stand-in for Meta's WhatsApp Cloud API (Graph API): sends, media, limits, signed webhooks.

    app = create_app(settings.sandbox)      # aiohttp app, for in-process use
    await serve(settings)                   # `pipeline sandbox`
    async with running_sandbox(rate_per_second=1000) as sandbox:   # pipeline.sandbox.testing
        ...

It is an independent implementation of Meta's side: it never imports the client (`pipeline.whatsapp`)
or the contracts, so a misreading of Meta's formats shared by both cannot hide. docs/sandbox.md has
the test numbers, the control endpoints and the limits of its fidelity.
"""

from pipeline.sandbox.app import create_app, serve

__all__ = ["create_app", "serve"]
