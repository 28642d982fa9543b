"""The API's forwarded read routes: the store's answer unchanged, or 503 when the store does not answer."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from pipeline.api.reads import close_forwarder, forward_routes
from pipeline.local.kafka import free_port
from tests.store.test_cli import KEY, store_url  # noqa: F401 — the running store fixture


async def _through(app: Starlette, path: str, key: str = KEY) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
        return await http.get(path, headers={"X-API-Key": key})


async def test_reads_are_forwarded_with_the_key_and_answered_unchanged(store_url: str) -> None:  # noqa: F811
    app = Starlette(routes=forward_routes(store_url))
    try:
        found = await _through(app, "/v1/messages/req_cli")
        assert found.status_code == 200
        assert found.json()["status"] == "read"
        assert found.headers["content-type"] == "application/json"
        search = await _through(app, "/v1/messages?q=order&status=read")
        assert [m["request_id"] for m in search.json()["messages"]] == ["req_cli"]
        assert (await _through(app, "/v1/messages/req_cli", key="wrong-key-123")).status_code == 401
        assert (await _through(app, "/v1/messages?limit=0")).json()["error"]["fields"][0]["field"] == "limit"
    finally:
        await close_forwarder()


async def test_a_store_that_does_not_answer_is_a_503_not_a_crash() -> None:
    app = Starlette(routes=forward_routes(f"http://127.0.0.1:{free_port()}"))
    try:
        response = await _through(app, "/v1/contacts/16505551234/messages")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "store_unavailable"
        assert response.headers["retry-after"] == "5"
    finally:
        await close_forwarder()
