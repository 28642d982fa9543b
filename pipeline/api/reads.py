"""The read routes on the producer API's address: forwarded to the store (`API_STORE_URL`).

    routes = forward_routes(settings.api.store_url)      # Starlette routes, GET/DELETE only
    await close_forwarder()                               # on shutdown

Users get one base URL; the store answers (authentication, per-number 404s, the database) in its own
process, so a database outage can only make these routes answer 503 — never `POST /v1/messages`.
A deployment with an ingress routes these paths straight to the store instead (docs/store.md).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.observability import get_logger

log = get_logger(__name__)

READ_PATHS = (
    ("/v1/messages/{request_id}", ("GET",)),
    ("/v1/messages", ("GET",)),
    ("/v1/contacts/{wa_id}/messages", ("GET",)),
    ("/v1/contacts/{wa_id}/analytics", ("GET",)),
    ("/v1/contacts/{wa_id}", ("DELETE",)),
    ("/v1/analytics", ("GET",)),
)
_FORWARDED_HEADERS = ("authorization", "x-api-key", "traceparent", "tracestate", "accept")
_RETURNED_HEADERS = ("content-type", "retry-after", "www-authenticate")

_clients: dict[str, httpx.AsyncClient] = {}


def _client(base_url: str) -> httpx.AsyncClient:
    client = _clients.get(base_url)
    if client is None:
        client = _clients[base_url] = httpx.AsyncClient(base_url=base_url, timeout=10.0)
    return client


def forwarder(store_url: str) -> Any:
    async def forward(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k in _FORWARDED_HEADERS}
        try:
            answer = await _client(store_url).request(
                request.method, request.url.path, params=request.url.query, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("store_unreachable", error=type(exc).__name__)
            body = {"error": {"status": 503, "code": "store_unavailable",
                              "message": "the message store is unavailable; retry later", "fields": []}}
            return Response(orjson.dumps(body), status_code=503, media_type="application/json",
                            headers={"Retry-After": "5"})
        kept = {k: v for k, v in answer.headers.items() if k in _RETURNED_HEADERS}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    return forward


def forward_routes(store_url: str) -> list[Route]:
    forward = forwarder(store_url)
    return [Route(path, forward, methods=list(methods)) for path, methods in READ_PATHS]


async def close_forwarder() -> None:
    for client in _clients.values():
        await client.aclose()
    _clients.clear()
