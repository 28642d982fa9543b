"""The activity console: static pages at `/console` that read the store's read API in the browser.

    app.mount("/console", console_app(settings.console))   # beside the read API routes (the store does)

It adds no data path: the browser calls the same `/v1/...` routes with the key the operator typed, so it
sees exactly what that key may see. The pages ship in the package (`static/`), with no CDN and no build
step. Every answer carries a Content-Security-Policy that allows scripts, styles and requests from this
origin only and forbids inline script, so message text (user content) can never run as code.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline.console.settings import ConsoleSettings
from pipeline.contracts.meta_errors import MEANINGS

STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_FILES = {"console.js": "text/javascript", "console.css": "text/css"}


def console_app(settings: ConsoleSettings) -> Starlette:
    """The console as an ASGI app to mount at `/console`."""
    config = {"trace_url": settings.trace_url, "meanings": {cls.value: text for cls, text in MEANINGS.items()}}

    async def index(request: Request) -> Response:
        if not request.url.path.endswith("/"):  # relative asset URLs need the trailing slash
            return RedirectResponse(request.url.path + "/", headers=_SECURITY_HEADERS)
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=_SECURITY_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _FILES:  # a fixed list: no path from the URL ever reaches the filesystem
            return Response("not found", status_code=404, headers=_SECURITY_HEADERS)
        return FileResponse(STATIC / name, media_type=_FILES[name], headers=_SECURITY_HEADERS)

    async def config_json(request: Request) -> Response:
        return JSONResponse(config, headers=_SECURITY_HEADERS)

    return Starlette(routes=[
        Route("/", index),
        Route("/config.json", config_json),
        Route("/{name}", asset),
    ])
